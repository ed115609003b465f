"""``viridian fuzz``: a seeded model-level campaign of hostile-guest operations (viridian.fuzz.model)."""

from __future__ import annotations

import argparse
from typing import Any

from viridian.cli.grammar import add_json_options, data_on_stdout, emit_json
from viridian.errors import UserError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("fuzz", help="fuzz the partition model with hostile MSR/hypercall/interrupt sequences",
                              description="Run a seeded campaign of random guest operations against partitions "
                              "offering everything; report operations executed and failures (exit 1 on any).")
    p.add_argument("--ops", type=int, default=100_000, help="operations in total (default 100000)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0; same seed, same campaign)")
    p.add_argument("--presets", default="all,recommended,xen-defaults", help="partitions to fuzz, comma-separated")
    p.add_argument("--shard-seed", type=int, metavar="S",
                   help="run one shard alone with this seed (as printed by a campaign) on one preset")
    add_json_options(p, "the results")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no per-shard lines (the total only)")
    from viridian.fanout.cli import add_arguments

    add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from viridian.config.presets import PRESETS

    if args.ops < 1:
        raise UserError("--ops must be at least 1")
    presets = tuple(p.strip() for p in args.presets.split(",") if p.strip())
    bad = [p for p in presets if p not in PRESETS]
    if bad or not presets:
        raise UserError(f"--presets {args.presets!r}: choose from {', '.join(PRESETS)}")
    from viridian.fanout import Cell, fan_out
    from viridian.fanout.cli import options
    from viridian.fanout.plans import fuzz_cells, merge_fuzz

    workers, cluster = options(args)
    if args.shard_seed is not None:
        if len(presets) != 1 or not 0 <= args.shard_seed < 1 << 63:
            raise UserError("--shard-seed S reruns one shard: give one preset (--presets P) and 0 <= S < 2**63")
        cells = [Cell("fuzz", {"seed": args.shard_seed, "operations": args.ops, "preset": presets[0]})]
    else:
        cells = fuzz_cells(args.ops, args.seed, presets)
    done = fan_out(cells, workers, cluster, what="fuzz shards", quiet=args.quiet or data_on_stdout(args))
    results = [r.value for r in done if r.value is not None]
    lost = [r for r in done if r.value is None]
    merged = merge_fuzz(results)
    failures = merged["failures"] + len(lost)
    merged["failures"] = failures
    merged["lost_shards"] = [{"shard": r.cell.kwargs, "error": r.error} for r in lost]
    if not emit_json(args, merged):
        for r in results if not args.quiet else []:
            rate = r["ops_per_second"] or 0
            print(f"fuzz: {r['preset']:13} seed {r['seed']}: {r['operations']:,} operations, {r['failures']} failures "
                  f"({rate:,} ops/s)")
            for f in r["first_failures"][:10]:
                print(f"  op {f['op']}: {f['kind']}: {f['detail']}")
        for cr in lost:
            print(f"fuzz: shard {cr.cell.kwargs} did not finish: {cr.error}")
        print(f"fuzz: {merged['operations']:,} operations executed in {len(cells)} shard(s), {failures} failures "
              f"found, {merged['seconds']:.1f} s")
    return 1 if failures else 0
