"""``viridian fuzz``: a seeded model-level campaign of hostile-guest operations (viridian.fuzz.model)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from viridian.errors import UserError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("fuzz", help="fuzz the partition model with hostile MSR/hypercall/interrupt sequences",
                              description="Run a seeded campaign of random guest operations against partitions "
                              "offering everything; report operations executed and failures (exit 1 on any).")
    p.add_argument("--ops", type=int, default=100_000, help="operations in total (default 100000)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0; same seed, same campaign)")
    p.add_argument("--presets", default="all,recommended,xen-defaults", help="partitions to fuzz, comma-separated")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from viridian.config.presets import PRESETS
    from viridian.fuzz.model import campaign

    if args.ops < 1:
        raise UserError("--ops must be at least 1")
    presets = tuple(p.strip() for p in args.presets.split(",") if p.strip())
    bad = [p for p in presets if p not in PRESETS]
    if bad or not presets:
        raise UserError(f"--presets {args.presets!r}: choose from {', '.join(PRESETS)}")
    tty = sys.stderr.isatty() and not args.json

    def progress(i: int) -> None:
        if tty:
            print(f"\r  {i:>9,} operations", end="", file=sys.stderr, flush=True)

    results = campaign(args.ops, args.seed, presets, progress)
    if tty:
        print("\r", end="", file=sys.stderr)
    total = sum(r.operations for r in results)
    failures = sum(r.failure_count for r in results)
    seconds = sum(r.seconds for r in results)
    if args.json:
        print(json.dumps({"operations": total, "failures": failures, "seconds": round(seconds, 2),
                          "campaigns": [r.to_json() for r in results]}, indent=2))
    else:
        for r in results:
            print(f"fuzz: {r.preset:13} seed {r.seed}: {r.operations:,} operations, {r.failure_count} failures "
                  f"({r.operations / r.seconds if r.seconds else 0:,.0f} ops/s)")
            for f in r.failures[:10]:
                print(f"  op {f.op}: {f.kind}: {f.detail}")
        print(f"fuzz: {total:,} operations executed, {failures} failures found, {seconds:.1f} s")
    return 1 if failures else 0
