"""Run the conformance suite image on viridian and turn its TAP into results (one dict per run)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from viridian.config.enlightenments import Enlightenments
from viridian.conformance.tap import parse

MATRIX_PRESETS = ("none", "xen-3.4", "recommended", "all")
MATRIX_VCPUS = (1, 2, 4, 65)
MAX_TICKS = 40_000_000_000
MSG_CONN, EVENT_CONN, CONN_SINT = 0x4242, 0x4243, 3  # the suite's msg_conn= / event_conn= (conn_sint default 3)


def suite_image(path: str | None = None) -> Path:
    """The suite image: the shipped conformance.elf (built with ``make -C fixtures`` when missing in a
    checkout), or ``path``."""
    from viridian.guests import guest_path

    if path:
        return Path(path)
    return guest_path("conformance")


def run_suite(config: Enlightenments, offer: str, image: Path, vcpus: int, cmdline: str = "",
              mem_mib: int | None = None, engine: str | None = None) -> dict[str, Any]:
    from viridian.machine.loader import load_image
    from viridian.machine.machine import Machine
    from viridian.partition.ports import ports_of

    t0 = time.perf_counter()
    mem = mem_mib or max(128, 64 + vcpus)
    # host-made connections for the positive HvPostMessage / HvSignalEvent tests (a guest cannot create ports)
    suite_cmdline = f"msg_conn={MSG_CONN:#x} event_conn={EVENT_CONN:#x} {cmdline}".strip()
    from viridian.machine.engines import DEFAULT

    m = Machine(config, load_image(image), vcpus=vcpus, mem_mib=mem, cmdline=suite_cmdline, max_ticks=MAX_TICKS,
                engine=engine or DEFAULT)
    ports_of(m.partition).create_message_port(MSG_CONN, 0, CONN_SINT)
    ports_of(m.partition).create_event_port(EVENT_CONN, 0, CONN_SINT)
    line_times: list[float] = []  # virtual time at which each serial line was complete: the tests' durations

    def sink(data: bytes) -> None:
        line_times.extend([m.clock.tsc() / m.clock.tsc_hz] * data.count(b"\n"))

    m.ports.serial.sink = sink
    try:
        res = m.run()
    finally:
        m.ports.serial.sink = None
        m.close()  # only the serial text and the result are read below (issue 19 item 5)
    return result(f"{offer} x{vcpus}" + (f" [{cmdline}]" if cmdline else ""), offer, vcpus, cmdline,
                  m.ports.serial.text(), res.status, res.code, res.detail, line_times,
                  round(time.perf_counter() - t0, 3))


def result(name: str, offer: str, vcpus: int, cmdline: str, serial: str, status: str, code: int | None,
           detail: str = "", line_times: list[float] | None = None, wall: float = 0.0) -> dict[str, Any]:
    """One run as a dict (the JSON of ``viridian conformance``): the TAP read from ``serial`` and how the run
    ended; ``status`` "log" for a serial log of another hypervisor (its exit status is not in the log)."""
    tap = parse(serial, line_times)
    counts = tap.counts
    problem = ""
    if tap.plan is None:
        problem = "no TAP plan line (1..N) in the serial output"
    elif not tap.complete:
        problem = f"planned {tap.plan} tests, {len(tap.tests)} reported" + (f"; bail out: {tap.bail_out}"
                                                                            if tap.bail_out else "")
    if status not in ("exit", "log"):
        problem = f"run ended {status}" + (f": {detail}" if detail else "") + (f"; {problem}" if problem else "")
    elif status == "exit" and (code not in (0, 1) or (code == 0) != (counts["fail"] == 0)):
        problem = problem or f"exit code {code} does not match {counts['fail']} failure(s)"
    return {
        "name": name, "offer": offer, "vcpus": vcpus,
        "cmdline": cmdline, "status": status, "exit_code": code, "counts": counts,
        "complete": not problem, "problem": problem, "hyperv_present": tap.hyperv_present,
        "tests": [{"number": t.number, "area": t.area, "what": t.what, "ref": t.ref, "outcome": t.outcome,
                   "reason": t.reason, "diagnostics": t.diagnostics, "seconds": round(t.seconds, 6)}
                  for t in tap.tests],
        "wall_seconds": wall,
        "serial_tail": "\n".join(serial.splitlines()[-20:]),
    }


def by_area(run: dict[str, Any]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for t in run["tests"]:
        out.setdefault(t["area"], {"pass": 0, "fail": 0, "skip": 0})[t["outcome"]] += 1
    return out
