"""The real-kernel boot matrix (issue 18): a kernel booted to its root-mount panic under offers x vCPU counts.

Each cell is one ``viridian boot`` in its own process (so a cell that crashes the host, or grows memory, costs
only itself), with ``--quiet --stats-json`` giving the result and the console log. A cell is **ok** when the
kernel reached the panic ("VFS: Unable to mount root fs"), the run ended the way that offer reports a panic
(``crash`` through the crash MSRs, else the ``reset`` that ``panic=-1`` asks for) and the log has no oops and no
fall-back line (``FALLBACKS``: a timer the kernel could not use, a TSC it marked unstable for a reason other than
running on Hyper-V). Anything else is named: the first oops line, the first fall-back line, or the result.

Run: ``make linux-matrix`` (``python -m viridian.lab.boot_matrix --help``).
"""

from __future__ import annotations

import argparse
import io
import json
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
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


def run_matrix(kernel: str, offers: tuple[str, ...], vcpus: tuple[int, ...], *, workers: int | None = None,
               cluster: str | None = None, max_ticks: int = MAX_TICKS) -> list[Cell]:
    """Every cell, in a stable order (offer-major), as fan-out cells (viridian.fanout): in this process one
    after another, or on ``workers`` local worker processes / a Dask ``cluster``."""
    from viridian.fanout import fan_out
    from viridian.fanout.plans import boot_cells

    out = []
    for r in fan_out(boot_cells(kernel, offers, vcpus, max_ticks), workers, cluster, what="boot matrix"):
        if r.value is not None:
            out.append(Cell(**r.value))
        else:
            kw = r.cell.kwargs
            out.append(Cell(kw["offer"], kw["vcpus"], "error", "error", (r.error or "cell failed")[:160], 0, 0))
    return out


def render(cells: list[Cell], offers: tuple[str, ...], vcpus: tuple[int, ...]) -> str:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="Debian kernel to the root-mount panic", title_justify="left")
    t.add_column("offer")
    for n in vcpus:
        t.add_column(f"{n} vCPU" + ("s" if n > 1 else ""), justify="center")
    by = {(c.offer, c.vcpus): c for c in cells}
    for o in offers:
        t.add_row(o, *[_mark(by[(o, n)]) for n in vcpus])
    console = Console(width=120, record=True, file=io.StringIO())
    console.print(t)
    for c in cells:
        if not c.ok:
            console.print(f"{c.offer} x {c.vcpus}: {c.verdict}: {c.detail}", markup=False)
    return console.export_text()


def _mark(c: Cell) -> str:
    return f"ok {c.wall_seconds:.0f}s" if c.ok else c.verdict


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m viridian.lab.boot_matrix", description=__doc__.split("\n")[0])
    p.add_argument("kernel", nargs="?", help="bzImage (default: viridian fetch-kernel's Debian kernel)")
    p.add_argument("--offers", default=",".join(OFFERS), help=f"comma-separated presets (default {','.join(OFFERS)})")
    p.add_argument("--vcpus", default=",".join(map(str, VCPUS)), help="comma-separated vCPU counts")
    p.add_argument("--workers", type=int, default=None, help="boot N cells at once on local worker processes")
    p.add_argument("--cluster", metavar="ADDRESS", help="boot the cells on a Dask scheduler (tcp://127.0.0.1:PORT)")
    p.add_argument("--max-ticks", type=int, default=MAX_TICKS, help="virtual-time budget per cell (TSC ticks)")
    p.add_argument("--json", action="store_true", help="print the cells as JSON on stdout")
    args = p.parse_args(argv)
    kernel = args.kernel
    if kernel is None:
        from viridian.cli.fetch_kernel_cmd import fetch_kernel
        from viridian.errors import UserError

        try:
            kernel = str(fetch_kernel())
        except UserError as exc:
            print(f"boot matrix skipped: {exc}", file=sys.stderr)
            return 2
    try:
        offers = tuple(o for o in args.offers.split(",") if o)
        vcpus = tuple(int(n) for n in args.vcpus.split(",") if n)
    except ValueError:
        print("--vcpus: a comma-separated list of integers", file=sys.stderr)
        return 2
    from viridian.errors import UserError

    try:
        cells = run_matrix(kernel, offers, vcpus, workers=args.workers, cluster=args.cluster,
                           max_ticks=args.max_ticks)
    except UserError as exc:
        print(f"boot matrix: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([asdict(c) for c in cells], indent=2))
    else:
        print(render(cells, offers, vcpus))
        good = sum(c.ok for c in cells)
        print(f"{good} of {len(cells)} cells green")
    return 0 if all(c.ok for c in cells) else 1


if __name__ == "__main__":
    sys.exit(main())
