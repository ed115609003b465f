"""The hostile guests on the reference engine (``engine="reference"``): every hostile_arch case gives the answer
test_hostile_arch.CASES names -- never "error" or a hang -- and exactly the fast engine's outcome (status, code,
detail, exceptions, serial), as does hostile_pages. Each engine runs in its own fresh process: the fast engine's
engine patches are process-wide, so a reference run after a fast one in one process is not Unicorn's own
(docs: the reference engine's report, "cross-contamination")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from viridian.config.presets import load_config
from viridian.machine.loader import load_image
from viridian.machine.machine import Machine

sys.path.insert(0, str(Path(__file__).parent))
from test_hostile_arch import CASES  # the expected answers: one table for both engines

# (guest, cmdline, MiB, vCPUs): every hostile_arch case, the edge of RAM at other RAM sizes, the cases that hung
# on 2 vCPUs, and hostile_pages (page MSRs on one page, the APIC and past RAM)
RUNS = [("hostile_arch.elf", c, 128, 1) for c in sorted(CASES)] + [
    ("hostile_arch.elf", "e", 64, 1), ("hostile_arch.elf", "e", 1024, 1), ("hostile_arch.elf", "p", 128, 2),
    ("hostile_arch.elf", "s", 128, 2), ("hostile_arch.elf", "l", 128, 2), ("hostile_pages.elf", "", 128, 1)]


def outcome(path: Path, engine: str, cmdline: str, mem_mib: int, vcpus: int) -> dict[str, Any]:
    m = Machine(load_config(preset="recommended"), load_image(path), cmdline=cmdline, mem_mib=mem_mib, vcpus=vcpus,
                max_ticks=200_000_000, engine=engine)
    m.run()
    r = m.result
    assert r is not None
    return {"status": r.status, "code": r.code, "detail": r.detail, "serial": m.ports.serial.text(),
            "exceptions": sorted(m.total_stats().exceptions.items()), "time": m.clock.tsc()}


def collect(guests: Path, engine: str) -> dict[str, Any]:
    out = [outcome(guests / g, engine, c, mib, n) for g, c, mib, n in RUNS]
    return {"runs": out, "fast_loaded": sorted(k for k in sys.modules if k.startswith("viridian.machine.unicorn"))}


def _fresh(guests: Path, engine: str) -> dict[str, Any]:
    code = ("import json, sys\n"
            f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
            "from pathlib import Path\n"
            "import test_reference_hostile as t\n"
            "print(json.dumps(t.collect(Path(sys.argv[1]), sys.argv[2])))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(guests), engine], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return result


@pytest.fixture(scope="module")
def engines(guests: Path) -> dict[str, dict[str, Any]]:
    return {e: _fresh(guests, e) for e in ("reference", "unicorn")}


@pytest.mark.parametrize("i", range(len(RUNS)), ids=[f"{g[:-4]}-{c or 'run'}-{mib}M-x{n}" for g, c, mib, n in RUNS])
def test_reference_engine_answers_as_the_fast_engine(engines: dict[str, dict[str, Any]], i: int) -> None:
    guest, case, _mib, _n = RUNS[i]
    ref, fast = engines["reference"]["runs"][i], engines["unicorn"]["runs"][i]
    if guest == "hostile_arch.elf":
        status, code, first, what = CASES[case]
        assert ref["status"] == status, (what, ref)
        if code is not None:
            assert ref["code"] == code, (what, ref["serial"])
        if first is not None:
            assert f"first vector {first}" in ref["detail"], (what, ref["detail"])
    else:
        assert (ref["status"], ref["code"]) == ("exit", 0), ref
    assert ref == fast


def test_reference_side_never_loads_the_fast_engine(engines: dict[str, dict[str, Any]]) -> None:
    """The shared checks (ucapi/descriptor_checks.py, delivery.py, paging.py) are not the fast engine: the reference engine
    answers every case without importing viridian.machine.unicorn."""
    assert engines["reference"]["fast_loaded"] == []


def test_an_engine_stop_without_progress_is_resumed_a_bounded_number_of_times() -> None:
    """arch.resume_stop (lost_fault.resume_stop's rule): stops at one RIP with the clock moved only by whole exits
    are resumed STOP_ROUNDS times, then refused (the run ends "error", not a hang); a completed instruction byte
    or another RIP between stops starts the count again."""
    from collections import Counter
    from types import SimpleNamespace

    from viridian.machine.backend import EXIT_TICKS
    from viridian.machine.reference.arch import STOP_ROUNDS, resume_stop

    v: Any = SimpleNamespace(bytes=0, unexplained_stop=None, stats=SimpleNamespace(events=Counter()))
    answers = []
    for _ in range(STOP_ROUNDS + 1):
        answers.append(resume_stop(v, 0x1000))
        v.bytes += EXIT_TICKS  # an MMIO read each round: an exit, no instruction byte
    assert answers == [True] * STOP_ROUNDS + [False]
    for _ in range(3 * STOP_ROUNDS):  # progress (3 bytes) between stops: never refused
        v.bytes += 3
        assert resume_stop(v, 0x1000)
    for i in range(3 * STOP_ROUNDS):  # alternating RIPs: never refused
        assert resume_stop(v, 0x2000 + (i & 1))
