"""The real-kernel boot matrix (issue 18) as a command: every cell of offers x vCPU counts fanned out
(viridian.fanout), the table, the verdict count. One cell and its verdict are viridian/lab/boot_matrix.py.

Run: ``make linux-matrix`` (``python -m viridian.cli.boot_matrix --help``).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from dataclasses import asdict

from viridian.lab.boot_matrix import MAX_TICKS, OFFERS, VCPUS, Cell


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
    p = argparse.ArgumentParser(prog="python -m viridian.cli.boot_matrix", description=__doc__.split("\n")[0])
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
