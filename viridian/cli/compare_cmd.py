"""``viridian compare IMAGE --a CONFIG --b CONFIG``: one guest under two offers, side by side. IMAGE is a guest
image (run as by ``viridian run``) or a Linux kernel (bzImage / vmlinux, booted as by ``viridian boot``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from viridian.cli.grammar import add_json_options, emit_json
from viridian.config.spec import CONFIG_HELP, parse_config
from viridian.errors import UserError
from viridian.machine.linux_machine import DEFAULT_APPEND

GUEST_MEM, LINUX_MEM = 128, 256


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("compare", help="run one guest under two offers and compare exits and negotiation",
                              description="Run IMAGE twice, under offer A and offer B, with the same vCPUs and "
                              "command line; print exits by reason, APIC exits, per-interrupt figures and what "
                              "the guest negotiated differently. A Linux kernel (bzImage or vmlinux) is booted "
                              "as by viridian boot (--initrd, --append).")
    p.add_argument("image", help="guest image (ELF64, multiboot or flat) or a Linux bzImage / vmlinux")
    p.add_argument("-a", "--a", dest="a", required=True, metavar="CONFIG", help=CONFIG_HELP)
    p.add_argument("-b", "--b", dest="b", required=True, metavar="CONFIG", help=CONFIG_HELP)
    p.add_argument("--vcpus", type=int, default=1, metavar="N", help="vCPUs in both runs (default 1)")
    p.add_argument("--mem", type=int, default=None, metavar="MiB",
                   help=f"guest RAM (default {GUEST_MEM}, {LINUX_MEM} for a Linux kernel)")
    p.add_argument("--pcpus", type=int, default=None, help="simulated physical CPUs (default: one per vCPU)")
    p.add_argument("--cmdline", default="", metavar="TEXT", help="guest command line (RCX), e.g. 'ticks=20'")
    p.add_argument("--initrd", metavar="FILE", help="Linux kernel only: initramfs (cpio), as for viridian boot")
    p.add_argument("--append", default=None, metavar="TEXT",
                   help=f"Linux kernel only: its command line (default {DEFAULT_APPEND!r})")
    p.add_argument("--max-ticks", type=int, default=20_000_000_000, metavar="N", help="virtual-time budget")
    p.add_argument("--report", action="store_true", help="also print both negotiation reports")
    add_json_options(p, "{a, b, rows, negotiation}")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on stdout (a --json-file FILE only)")
    from viridian.fanout.cli import add_arguments

    add_arguments(p)
    p.set_defaults(func=run)


def _factory(args: argparse.Namespace) -> tuple[bool, str, Callable[[Any], Any]]:
    """(is Linux, the command line used, a function building the unstarted Machine for one offer)."""
    from viridian.machine.linux_machine import is_linux_image, linux_machine

    linux = is_linux_image(args.image)
    if not linux:
        if args.initrd is not None or args.append is not None:
            raise UserError(f"--initrd/--append: {args.image} is not a Linux kernel (bzImage or vmlinux); "
                            "give a guest image's command line with --cmdline")
        from viridian.machine.loader import load_image
        from viridian.machine.machine import Machine

        image = load_image(args.image)
        return False, args.cmdline, lambda c: Machine(
            c, image, vcpus=args.vcpus, mem_mib=args.mem or GUEST_MEM, pcpus=args.pcpus, cmdline=args.cmdline,
            max_ticks=args.max_ticks)
    if args.cmdline:
        raise UserError(f"--cmdline: {args.image} is a Linux kernel; give its command line with --append")
    append = DEFAULT_APPEND if args.append is None else args.append
    return True, append, lambda c: linux_machine(
        c, args.image, initrd=args.initrd, append=append, vcpus=args.vcpus, mem_mib=args.mem or LINUX_MEM,
        pcpus=args.pcpus, max_ticks=args.max_ticks)


def _sides(args: argparse.Namespace, linux: bool, cmdline: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both runs as fan-out cells: one after the other here (one machine at a time: a Linux machine holds
    256 MiB of guest RAM), or side by side with --workers 2 / --cluster."""
    from viridian.fanout import Cell, fan_out
    from viridian.fanout.cli import options

    workers, cluster = options(args)
    common = {"image": args.image, "vcpus": args.vcpus, "mem_mib": args.mem or (LINUX_MEM if linux else GUEST_MEM),
              "pcpus": args.pcpus, "cmdline": args.cmdline, "linux": linux, "initrd": args.initrd,
              "append": cmdline if linux else "", "max_ticks": args.max_ticks}
    done = fan_out([Cell("compare", {**common, "config": spec}, label) for label, spec in (("A", args.a),
                                                                                           ("B", args.b))],
                   workers, cluster, what="compare", quiet=True)
    for r in done:
        if r.value is None:
            raise UserError(f"run {r.cell.label} ({r.cell.kwargs['config']}) failed: {r.error}")
    assert done[0].value is not None and done[1].value is not None
    return done[0].value, done[1].value


def run(args: argparse.Namespace) -> int:
    from viridian.report.compare import comparison_lines, negotiation_diff, rows
    from viridian.report.text import negotiation_lines

    configs = [parse_config(args.a), parse_config(args.b)]
    if args.pcpus is not None and args.pcpus < 1:
        raise UserError("--pcpus must be at least 1")
    linux, cmdline, _make = _factory(args)  # checks the options before anything runs
    del configs
    a, b = _sides(args, linux, cmdline)
    if emit_json(args, {"image": args.image, "kind": "linux" if linux else "guest", "vcpus": args.vcpus,
                        "cmdline": cmdline, "initrd": args.initrd, "configs": {"a": args.a, "b": args.b},
                        "a": a, "b": b, "rows": rows(a, b), "negotiation": negotiation_diff(a, b)}) or args.quiet:
        return 0
    lines: list[str] = []
    if args.report:
        for label, spec, d in (("A", args.a, a), ("B", args.b, b)):
            lines += [*negotiation_lines(d["negotiation"], title=f"{label} = {spec}"), ""]
    lines += comparison_lines(a, b, f"{args.a}", f"{args.b}")
    print("\n".join(lines))
    sys.stdout.flush()
    return 0
