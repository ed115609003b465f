"""``viridian compare IMAGE --a CONFIG --b CONFIG``: one guest under two offers, side by side."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from viridian.config.spec import CONFIG_HELP, parse_config
from viridian.errors import UserError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("compare", help="run one guest under two offers and compare exits and negotiation",
                              description="Run IMAGE twice, under offer A and offer B, with the same vCPUs and "
                              "command line; print exits by reason, APIC exits, per-interrupt figures and what "
                              "the guest negotiated differently.")
    p.add_argument("image", help="guest image (ELF64 or flat)")
    p.add_argument("--a", required=True, metavar="CONFIG", help=CONFIG_HELP)
    p.add_argument("--b", required=True, metavar="CONFIG", help=CONFIG_HELP)
    p.add_argument("--vcpus", type=int, default=1, help="vCPUs in both runs (default 1)")
    p.add_argument("--mem", type=int, default=128, metavar="MiB", help="guest RAM (default 128)")
    p.add_argument("--pcpus", type=int, default=None, help="simulated physical CPUs (default: one per vCPU)")
    p.add_argument("--cmdline", default="", metavar="TEXT", help="guest command line (RCX), e.g. 'ticks=20'")
    p.add_argument("--max-ticks", type=int, default=20_000_000_000, metavar="N", help="virtual-time budget")
    p.add_argument("--report", action="store_true", help="also print both negotiation reports")
    p.add_argument("--json", action="store_true", help="print {a, b, rows, negotiation} as JSON only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from viridian.machine.loader import load_image
    from viridian.machine.machine import Machine
    from viridian.machine.report import stats_json
    from viridian.report.compare import comparison_lines, negotiation_diff, rows
    from viridian.report.text import negotiation_lines

    configs = [parse_config(args.a), parse_config(args.b)]
    if args.pcpus is not None and args.pcpus < 1:
        raise UserError("--pcpus must be at least 1")
    image = load_image(args.image)
    data = []
    for config in configs:
        m = Machine(config, image, vcpus=args.vcpus, mem_mib=args.mem, pcpus=args.pcpus, cmdline=args.cmdline,
                    max_ticks=args.max_ticks)
        m.run()
        data.append(stats_json(m))
    a, b = data
    if args.json:
        print(json.dumps({"image": args.image, "vcpus": args.vcpus, "cmdline": args.cmdline,
                          "configs": {"a": args.a, "b": args.b}, "a": a, "b": b, "rows": rows(a, b),
                          "negotiation": negotiation_diff(a, b)}, indent=2))
        return 0
    lines: list[str] = []
    if args.report:
        for label, spec, d in (("A", args.a, a), ("B", args.b, b)):
            lines += [*negotiation_lines(d["negotiation"], title=f"{label} = {spec}"), ""]
    lines += comparison_lines(a, b, f"{args.a}", f"{args.b}")
    print("\n".join(lines))
    sys.stdout.flush()
    return 0
