"""``viridian diff-engines``: every fixture guest (and optionally Debian's kernel with the event log) on two engine
configurations, compared; exit status 1 naming the first difference (viridian.lab.diff_engines)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from viridian.errors import UserError


def register(subparsers: Any) -> None:
    from viridian.cli.grammar import add_json_options
    from viridian.fanout.cli import add_arguments

    p = subparsers.add_parser(
        "diff-engines", help="the same guests on two engines: the same guest-visible outcome?",
        description="Run every fixture guest (conformance.elf among them) on two engine configurations at each "
        "vCPU count and compare result, serial output, exits by reason/MSR/hypercall/port/exception, APIC "
        "counters, virtual time and per-vCPU clocks (docs/diff-engines.md). --linux adds Debian's kernel: the "
        "first engine records its event log, the second replays it and the first divergence is named. "
        "Exit status 1 on any difference.")
    p.add_argument("--engines", metavar="A,B", help="two engine specs ENGINE[:FASTPATHS] (default: unicorn,"
                   "reference when the reference engine is registered, else unicorn,unicorn:all)")
    p.add_argument("--guests", metavar="NAMES", help="comma-separated guest names (default: every fixture guest; "
                   "'none' for only --linux)")
    p.add_argument("--vcpus", default="1,2,4", metavar="N,N", help="vCPU counts (default 1,2,4)")
    p.add_argument("--linux", nargs="?", const="", default=None, metavar="KERNEL",
                   help="also boot a Linux kernel to its root-mount panic with the event log (default kernel: "
                   "viridian fetch-kernel's)")
    p.add_argument("--linux-vcpus", default="1,2", metavar="N,N", help="vCPU counts of --linux (default 1,2)")
    p.add_argument("--max-ticks", type=int, default=None, metavar="N", help="virtual-time budget of --linux")
    add_json_options(p, "the cells and their differences")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress, no table (exit status only)")
    add_arguments(p)
    p.set_defaults(func=run)


def _counts(text: str, what: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UserError(f"{what} {text!r}: give vCPU counts separated by commas") from None
    if not vals or any(not 1 <= v <= 256 for v in vals):
        raise UserError(f"{what} {text!r}: choose counts in 1..256")
    return vals


def plan(args: argparse.Namespace) -> list[Any]:
    """The cells the options ask for (checked before anything runs)."""
    from viridian.fanout.executor import Cell
    from viridian.lab import diff_engines as D

    pair = tuple(x.strip() for x in args.engines.split(",")) if args.engines else D.default_pair()
    if len(pair) != 2 or not all(pair):
        raise UserError(f"--engines {args.engines!r}: give two engine specs, e.g. unicorn,reference")
    engines = tuple(D.parse_spec(e).label for e in pair)
    known = D.guest_names()
    if args.guests is None:
        guests = known
    elif args.guests.strip() == "none":
        guests = []
    else:
        guests = [g if g.endswith(".elf") else g + ".elf" for g in (x.strip() for x in args.guests.split(",")) if g]
        unknown = [g for g in guests if g not in known]
        if unknown:
            raise UserError(f"--guests: no fixture guest {unknown[0]!r} (choose from {', '.join(known)})")
    cells = [Cell("diff_guest", {"guest": g, "vcpus": n, "engines": engines}, f"{g} x{n}")
             for g in guests for n in _counts(args.vcpus, "--vcpus")]
    if args.linux is not None:
        kernel = args.linux
        if not kernel:
            from viridian.cli.fetch_kernel_cmd import fetch_kernel

            kernel = str(fetch_kernel())
        from viridian.machine.linux_machine import is_linux_image

        if not is_linux_image(kernel):
            raise UserError(f"--linux {kernel}: not a Linux kernel image (bzImage or vmlinux)")
        cells += [Cell("diff_linux", {"kernel": kernel, "vcpus": n, "engines": engines,
                                      "max_ticks": args.max_ticks or D.LINUX_MAX_TICKS}, f"linux x{n}")
                  for n in _counts(args.linux_vcpus, "--linux-vcpus")]
    if not cells:
        raise UserError("nothing to compare: give --guests or --linux")
    return cells


def run(args: argparse.Namespace) -> int:
    from viridian.cli.grammar import data_on_stdout, emit_json
    from viridian.fanout import fan_out
    from viridian.fanout.cli import options

    cells = plan(args)
    workers, cluster = options(args)
    quiet = args.quiet or data_on_stdout(args)
    results = []
    if workers is None and cluster is None:
        from viridian.fanout.executor import CellResult

        done = []  # in this process: a line per cell; a side that fails (its process died) fails only its cell
        for i, c in enumerate(cells, 1):
            try:
                (r,) = fan_out([c], quiet=True)
            except RuntimeError as exc:
                r = CellResult(c, error=str(exc)[:500])
            same = r.value is not None and r.value["same"]
            if not quiet:
                print(f"[{i}/{len(cells)}] {c.label}: {'same' if same else 'DIFFERS'} ({r.seconds:.1f} s)",
                      file=sys.stderr, flush=True)
            done.append(r)
    else:
        done = fan_out(cells, workers, cluster, what="diff-engines", quiet=quiet)
    for r in done:
        if r.value is not None:
            results.append(r.value)
        else:  # the cell failed twice (its worker died): a difference we cannot explain, named
            kw = r.cell.kwargs
            results.append({"guest": kw.get("guest") or "linux", "vcpus": kw["vcpus"], "engines": kw["engines"],
                            "same": False, "first": f"cell failed: {r.error}", "status": ["?", "?"],
                            "exits": [0, 0], "tsc": [0, 0], "seconds": [0, 0], "n_differences": 1})
    bad = [r for r in results if not r["same"]]
    data = {"engines": cells[0].kwargs["engines"], "cells": results, "ok": not bad,
            "first_difference": f"{bad[0]['guest']} x{bad[0]['vcpus']}: {bad[0]['first']}" if bad else None}
    on_stdout = emit_json(args, data)
    if not quiet and not on_stdout:
        print(render(results))
    if bad and not args.quiet:
        print(f"diff-engines: {len(bad)} of {len(results)} cells differ; first: {data['first_difference']}",
              file=sys.stderr)
    return 1 if bad else 0


def render(results: list[dict[str, Any]]) -> str:
    """The cells as one rich table (same / first difference per row)."""
    import io

    from rich.console import Console
    from rich.table import Table

    engines = results[0]["engines"] if results else ["A", "B"]
    t = Table(title=f"diff-engines: {engines[0]} vs {engines[1]}", title_justify="left")
    for name, just in (("guest", "left"), ("vCPUs", "right"), ("result", "left"), ("exits", "right"),
                       ("virtual time", "right"), ("seconds A/B", "right"), ("verdict", "left")):
        t.add_column(name, justify=just)  # type: ignore[arg-type]
    for r in results:
        st = r["status"][0] if r["status"][0] == r["status"][1] else " / ".join(map(str, r["status"]))
        ex = str(r["exits"][0]) if r["exits"][0] == r["exits"][1] else f"{r['exits'][0]} / {r['exits'][1]}"
        ts = str(r["tsc"][0]) if r["tsc"][0] == r["tsc"][1] else f"{r['tsc'][0]} / {r['tsc'][1]}"
        extra = f" ({r['events']} events)" if r.get("events") else ""
        if r.get("known"):
            extra += " (known: " + ", ".join(k["path"] for k in r["known"]) + ")"
        first = str(r["first"]) if len(str(r["first"])) <= 200 else str(r["first"])[:197] + "..."  # whole in --json
        verdict = "same" + extra if r["same"] else f"DIFFERS ({r['n_differences']}): {first}"
        t.add_row(r["guest"], str(r["vcpus"]), st, ex, ts, "/".join(f"{s:.1f}" for s in r["seconds"]), verdict)
    n_bad = sum(not r["same"] for r in results)
    console = Console(width=160, record=True, file=io.StringIO(), color_system=None)
    console.print(t, markup=False)
    console.print(f"{len(results) - n_bad} of {len(results)} cells the same", markup=False)
    return console.export_text().rstrip()
