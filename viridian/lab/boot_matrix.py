"""The real-kernel boot matrix (issue 18): a kernel booted to its root-mount panic under offers x vCPU counts.

Each cell is one ``viridian boot`` in its own process (so a cell that crashes the host, or grows memory, costs
only itself), with ``--quiet --stats-json`` giving the result and the console log. A cell is **ok** when the
kernel reached the panic ("VFS: Unable to mount root fs"), the run ended the way that offer reports a panic
(``crash`` through the crash MSRs, else the ``reset`` that ``panic=-1`` asks for) and the log has no oops and no
fall-back line (``FALLBACKS``: a timer the kernel could not use, a TSC it marked unstable for a reason other than
running on Hyper-V). Anything else is named: the first oops line, the first fall-back line, or the result.

The matrix runner (cells fanned out, the table, the command line) is viridian/cli/boot_matrix.py:
``make linux-matrix`` (``python -m viridian.cli.boot_matrix --help``).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PANIC = "VFS: Unable to mount root fs"
OFFERS = ("none", "xen-3.4", "recommended", "all")
VCPUS = (1, 2, 3, 4, 8)
APPEND = "console=ttyS0 panic=-1"
MAX_TICKS = 30_000_000_000  # 15 s of guest time; the panic comes at ~2-3 s
OOPS = re.compile(r"Oops|BUG:|general protection fault|stack-protector|invalid opcode:|Unable to handle "
                  r"|WARNING: CPU:|soft lockup|self-detected stall|rcu_preempt detected stalls|Kernel stack is "
                  r"corrupted|double fault")
FALLBACKS = re.compile(r"Marking TSC unstable due to (?!running on Hyper-V)|MP-BIOS bug: 8254 timer not connected"
                       r"|clocksource.*unstable|Unable to calibrate")


@dataclass
class Cell:
    offer: str
    vcpus: int
    verdict: str  # ok | oops | fallback | no-panic | <run status>
    status: str
    detail: str
    guest_seconds: float
    wall_seconds: float

    @property
    def ok(self) -> bool:
        return self.verdict == "ok"


def classify(status: str, serial: str) -> tuple[str, str]:
    """(verdict, detail) of one boot from its result status and console log."""
    if m := OOPS.search(serial):
        return "oops", _line_of(serial, m.start())
    if m := FALLBACKS.search(serial):
        return "fallback", _line_of(serial, m.start())
    if PANIC not in serial:
        return "no-panic", status
    if status not in ("crash", "reset"):
        return status, "panicked, but the run ended " + status
    return "ok", status


def _line_of(text: str, pos: int) -> str:
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    return text[start : end if end >= 0 else len(text)].strip()[:160]


def boot_cell(kernel: str, offer: str, vcpus: int, *, max_ticks: int = MAX_TICKS, append: str = APPEND,
              extra: tuple[str, ...] = (), timeout: float = 900.0) -> Cell:
    """One cell: ``viridian boot`` in a child process (its wall time in ``wall_seconds``)."""
    t0 = time.perf_counter()
    cell = _boot(kernel, offer, vcpus, max_ticks, append, extra, timeout)
    cell.wall_seconds = round(time.perf_counter() - t0, 1)
    return cell


def _boot(kernel: str, offer: str, vcpus: int, max_ticks: int, append: str, extra: tuple[str, ...],
          timeout: float) -> Cell:
    with tempfile.TemporaryDirectory(prefix="viridian-matrix-") as tmp:
        stats_path = Path(tmp) / "stats.json"
        cmd = [sys.executable, "-m", "viridian", "boot", kernel, "--preset", offer, "--vcpus", str(vcpus),
               "--append", append, "--max-ticks", str(max_ticks), "--quiet", "--stats-json", str(stats_path),
               *extra]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return Cell(offer, vcpus, "host-timeout", "host-timeout", f"no result after {timeout:.0f} s", 0, 0)
        try:
            data = json.loads(stats_path.read_text())
        except (OSError, ValueError):
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            return Cell(offer, vcpus, "error", "error", last[:160], 0, 0)
    status = str(data.get("result", {}).get("status", "?"))
    verdict, detail = classify(status, str(data.get("serial", "")))
    clock = data.get("time", {})
    guest = clock.get("tsc", 0) / clock.get("tsc_hz", 1) if isinstance(clock, dict) else 0.0
    return Cell(offer, vcpus, verdict, status, detail, round(guest, 2), 0.0)
