"""``viridian measure EXPERIMENT|all``: the exit-reduction lab (viridian.lab)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from viridian.cli.inputs import out_dir, out_file, out_file_named
from viridian.errors import UserError


def register(subparsers: Any) -> None:
    from viridian.lab.experiments import EXPERIMENTS

    p = subparsers.add_parser("measure", help="measure what each enlightenment saves (EOI, IPI, TPR, TLB, spin, idle)",
                              description="Run an experiment's configurations over vCPU counts and parameters on "
                              "the lab guest; print a table with the closed-form model beside each measurement. "
                              f"Experiments: {', '.join(EXPERIMENTS)}, or all.")
    p.add_argument("experiment", help=f"one of {', '.join(EXPERIMENTS)}, or all")
    p.add_argument("--configs", metavar="A,B,...", help="configurations to run (default: all of the experiment's)")
    p.add_argument("--vcpus", metavar="N,N,...", help="vCPU counts to sweep, e.g. 1,2,4,8,16,64 (a list here, "
                   "since measure sweeps; a single N means what it means elsewhere)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=V[,V...]",
                   help="set or sweep a parameter, e.g. n=100 or k=1,2,3 (repeatable)")
    p.add_argument("--list", action="store_true", help="list the experiments, configurations and parameters")
    p.add_argument("--json", action="store_true", help="print the rows as JSON on stdout only (no table)")
    p.add_argument("--json-file", metavar="FILE", type=out_file, help="write the rows as JSON ('-' = stdout, no table)")
    p.add_argument("--csv", metavar="FILE", type=out_file, help="write the rows as CSV ('-' = stdout, no table)")
    p.add_argument("--plot", metavar="FILE.png", type=out_file_named, help="write a chart (one experiment)")
    p.add_argument("--report", metavar="DIR", type=out_dir, help="write a Markdown write-up with charts into DIR")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no table")
    from viridian.fanout.cli import add_arguments

    add_arguments(p)
    p.set_defaults(func=run)


def _ints(text: str, what: str) -> list[int]:
    try:
        vals = [int(x, 0) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{what} {text!r}: give integers separated by commas") from None
    if not vals or any(v < 0 for v in vals):
        raise UserError(f"{what} {text!r}: give non-negative integers separated by commas")
    return vals


def _sweeps(params: list[str]) -> dict[str, list[int]]:
    out = {}
    for item in params:
        key, sep, vals = item.partition("=")
        if not sep or not key:
            raise UserError(f"--param {item!r}: write KEY=VALUE or KEY=V1,V2,...")
        out[key.strip()] = _ints(vals, f"--param {key}")
    return out


def run(args: argparse.Namespace) -> int:
    from viridian.lab import output
    from viridian.lab.experiments import EXPERIMENTS
    from viridian.lab.runner import lab_image, points

    if args.list:
        for e in EXPERIMENTS.values():
            print(f"{e.name}: {e.title}; parameters " + ", ".join(f"{k}={v}" for k, v in e.params.items())
                  + f"; vCPUs {','.join(map(str, e.vcpus))}")
            for c in e.configs:
                print(f"  {c.name:14} offer {c.offer:38} {c.note}")
        return 0
    names = list(EXPERIMENTS) if args.experiment == "all" else [args.experiment]
    for n in names:
        if n not in EXPERIMENTS:
            raise UserError(f"no experiment {n!r}; choose from {', '.join(EXPERIMENTS)} or all")
    if args.plot and len(names) > 1:
        raise UserError("--plot draws one experiment; use --report DIR for all of them")
    if args.plot or args.report:  # before the sweep: a missing [plot] extra is one line, not a late failure
        from viridian.lab.plot import require_matplotlib

        require_matplotlib()
    lab_image()
    configs = [c.strip() for c in args.configs.split(",")] if args.configs else None
    vcpus = _ints(args.vcpus, "--vcpus") if args.vcpus else None
    sweeps = _sweeps(args.param)
    plan = {}
    for n in names:
        e = EXPERIMENTS[n]
        cfg = configs if configs and len(names) == 1 else None
        usable = {k: v for k, v in sweeps.items() if k in e.params} if len(names) > 1 else sweeps
        plan[n] = points(e, cfg, vcpus if len(names) == 1 else None, usable)
    to_stdout = args.json or args.json_file == "-" or args.csv == "-"
    quiet = args.quiet or to_stdout
    results = _sweep(args, plan, quiet)
    if args.json:
        _write("-", output.to_json(results))
    if args.json_file:
        _write(args.json_file, output.to_json(results))
    if args.csv:
        _write(args.csv, output.to_csv(results))
    if args.plot:
        from viridian.lab.plot import plot

        print(f"viridian: wrote {plot(EXPERIMENTS[names[0]], results[names[0]], args.plot)}", file=sys.stderr)
    if args.report:
        from viridian.lab.writeup import write

        argv = shlex.join(["viridian", "measure", *sys.argv[2:]]) if len(sys.argv) > 1 else "viridian measure"
        print(f"viridian: wrote {write(results, Path(args.report), argv)}", file=sys.stderr)
    if not quiet:
        for n, rows in results.items():
            print("\n".join(output.table_lines(EXPERIMENTS[n], rows)))
            print()
    bad = [r for rows in results.values() for r in rows if r.get("model_matches") is False]
    if bad:
        print(f"viridian: {len(bad)} measurement(s) differ from the model (marked (!))", file=sys.stderr)
    return 0


def _sweep(args: argparse.Namespace, plan: dict[str, Any], quiet: bool) -> dict[str, list[dict[str, Any]]]:
    """Every point as a fan-out cell (in this process, or --workers/--cluster), rows grouped per experiment."""
    from viridian.fanout import Cell, fan_out
    from viridian.fanout.cli import options
    from viridian.lab.experiments import EXPERIMENTS
    from viridian.lab.runner import add_reductions

    workers, cluster = options(args)
    cells = [Cell("measure", {"experiment": n, "config": pt.config.name, "vcpus": pt.vcpus, "params": dict(pt.params)},
                  f"{n}/{pt.config.name} x{pt.vcpus}") for n, pts in plan.items() for pt in pts]
    done = fan_out(cells, workers, cluster, what="measuring", quiet=quiet)
    failed = [r for r in done if r.value is None]
    if failed:
        raise UserError(failed[0].error or f"{failed[0].cell.label} failed")
    results: dict[str, list[dict[str, Any]]] = {n: [] for n in plan}
    for r in done:
        assert r.value is not None
        results[r.cell.kwargs["experiment"]].append(r.value)
    for n, rows in results.items():
        add_reductions(EXPERIMENTS[n], rows)
    return results


def _write(path: str, text: str) -> None:
    if path == "-":
        sys.stdout.write(text)
        return
    Path(path).write_text(text, encoding="utf-8")
