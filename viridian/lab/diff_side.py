"""One side of a diff-engines cell, in a process of its own (``python -m viridian.lab.diff_side``: a JSON request
on stdin, a JSON answer as the last line of stdout).

Why a process per side: the fast engine's patches are process-wide (store_watch.py redirects libunicorn's PLT
slots, its quiet loads/stores change how every instance in the process translates; engine_build.py's switches
are read per process), so a reference run after a fast one in the same process is not Unicorn's own, and a
``unicorn:all`` run after a ``unicorn`` one may not be the fallback's own either. Only JSON crosses: the request
(engine spec, guest or kernel, vCPUs), the outcome, and for a Linux side the event log as a JSON file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

INPROCESS_ENV = "VIRIDIAN_DIFF_INPROCESS"  # "1": run sides in this process (the tests of the comparer, debugging)


def isolated() -> bool:
    return os.environ.get(INPROCESS_ENV, "") in ("", "0")


def run_side(req: dict[str, Any]) -> dict[str, Any]:
    """Run one side here: ``{"kind": "guest", "engine", "guest", "vcpus"}`` -> ``{"outcome"}``;
    ``{"kind": "linux", "engine", "kernel", "vcpus", "max_ticks", "append", "offer", "log": FILE,
    "replay": bool}`` -> ``{"outcome", "events", "pos", "divergence"}`` (a recording writes its log to FILE,
    a replay reads it from there)."""
    from viridian.lab import diff_engines as D

    spec = D.parse_spec(str(req["engine"]))
    if req["kind"] == "guest":
        return {"outcome": D.observe(spec, str(req["guest"]), int(req["vcpus"]))}
    from viridian.config.presets import load_config
    from viridian.machine.eventlog import EventLog
    from viridian.machine.linux_machine import linux_machine
    from viridian.report.run import stats_json

    log_file = Path(str(req["log"]))
    log = EventLog("replay", load_entries(log_file)) if req["replay"] else EventLog("record")
    with D._environment(spec.disable), linux_machine(
            load_config(preset=str(req["offer"])), str(req["kernel"]), append=str(req["append"]),
            vcpus=int(req["vcpus"]), max_ticks=int(req["max_ticks"]), **D._engine_args(spec)) as m:
        log.attach(m)
        m.run()
        log.finish()
        out = D.outcome(m, stats_json(m))
    if not req["replay"]:
        save_entries(log_file, log.entries)
    div = log.divergence
    return {"outcome": out, "events": len(log.entries), "pos": log.pos, "divergence": div.to_json() if div else None}


def save_entries(path: Path, entries: list[Any]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for e in entries:
            fh.write(json.dumps(e) + "\n")


def load_entries(path: Path) -> list[Any]:
    """The log's entries as the tuples EventLog compares (JSON arrays back to tuples)."""
    out = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            e = json.loads(line)
            out.append(tuple(tuple(x) if isinstance(x, list) else x for x in e))
    return out


def side(req: dict[str, Any]) -> dict[str, Any]:
    """One side in a child process (or here, with VIRIDIAN_DIFF_INPROCESS=1)."""
    if not isolated():
        return run_side(req)
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-m", "viridian.lab.diff_side"], input=json.dumps(req),
                          capture_output=True, text=True, env=env, check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"diff-engines side {req.get('engine')} {req.get('guest') or req.get('kernel')} "
                           f"x{req.get('vcpus')}: exit status {proc.returncode}: {tail}")
    answer: dict[str, Any] = json.loads(lines[-1])
    return answer


def temp_log() -> Path:
    fd, name = tempfile.mkstemp(prefix="viridian-eventlog-", suffix=".jsonl")
    os.close(fd)
    return Path(name)


def main() -> int:
    req = json.loads(sys.stdin.read())
    answer = run_side(req)
    sys.stdout.write("\n" + json.dumps(answer) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
