"""``viridian cpuid``: show the hypervisor CPUID leaves a configuration offers."""

from __future__ import annotations

import argparse
import json
from enum import IntFlag
from typing import Any

from viridian.config.presets import PRESETS, load_config
from viridian.config.qemu import parse_int
from viridian.partition.cpuid import CpuidRegs, hv_leaves
from viridian.tlfs.cpuid import (
    HV_INTERFACE_SIGNATURE,
    Feature,
    HardwareFeature,
    Leaf,
    NestedOptimization,
    PartitionPrivilege,
    Recommendation,
    vendor_string,
)


def register(subparsers: Any) -> None:
    """Add the ``cpuid`` subcommand (module contract of viridian.cli.main)."""
    parser = subparsers.add_parser(
        "cpuid", help="show hypervisor CPUID leaves 0x40000000-0x4000000A for a configuration",
        description="Synthesize the Hyper-V CPUID leaves for exactly one configuration source.")
    parser.add_argument("--hv", metavar="FLAGS", help="QEMU flags, e.g. hv-relaxed,hv-vapic,hv-spinlocks=0x1fff")
    parser.add_argument("--xen", metavar="GROUPS", help="Xen viridian groups, e.g. base,freq or defaults")
    parser.add_argument("--libvirt", metavar="FILE.xml", help="libvirt domain XML with <hyperv>")
    parser.add_argument("--preset", metavar="NAME", help=f"one of: {', '.join(PRESETS)}")
    parser.add_argument("--guest-os-id", metavar="VALUE", default="0",
                        help="GUEST_OS_ID value (Xen leaves 0x40000002/4 depend on it), e.g. 0x0001040A00004F7C")
    parser.add_argument("--json", action="store_true", help="print the leaves as JSON only")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Resolve the config, synthesize the leaves, print them."""
    config = load_config(hv=args.hv, xen=args.xen, libvirt_path=args.libvirt, preset=args.preset)
    guest_os_id = parse_int("--guest-os-id", args.guest_os_id, 64)
    leaves = hv_leaves(config, guest_os_id)
    if args.json:
        print(json.dumps(to_json(leaves)))
        return 0
    _print_table(leaves, config.style, guest_os_id)
    return 0


def to_json(leaves: dict[int, CpuidRegs]) -> dict[str, dict[str, int]]:
    """``{"0x40000000": {"eax": .., "ebx": .., "ecx": .., "edx": ..}, ...}`` in leaf order."""
    return {f"{leaf:#010x}": {"eax": r.eax, "ebx": r.ebx, "ecx": r.ecx, "edx": r.edx}
            for leaf, r in sorted(leaves.items())}


def _names(flags: type[IntFlag], value: int) -> list[str]:
    """Names of the set bits of ``value`` (unknown bits as ``bitN``)."""
    known = {int(m): str(m.name).removeprefix("ACCESS_").lower()
             for m in flags.__members__.values() if int(m) and not int(m) & (int(m) - 1)}
    return [known.get(1 << bit, f"bit{bit}") for bit in range(64) if value >> bit & 1]


def decode(leaf: int, r: CpuidRegs) -> str:
    """A one-line human reading of one leaf."""
    if leaf == Leaf.VENDOR_AND_MAX:
        return f"max leaf {r.eax:#x}, vendor {vendor_string(r.ebx, r.ecx, r.edx)!r}" if r.eax else "no leaves"
    if leaf == Leaf.INTERFACE:
        if r.eax == HV_INTERFACE_SIGNATURE:
            return "interface 'Hv#1'"
        return f"interface {r.eax:#x} (not Hv#1)" if r.eax else "no Hyper-V interface"
    if leaf == Leaf.VERSION:
        if not any((r.eax, r.ebx, r.ecx, r.edx)):
            return ""
        return (f"version {r.ebx >> 16}.{r.ebx & 0xFFFF}.{r.eax} SP{r.ecx} "
                f"branch {r.edx >> 24} number {r.edx & 0xFFFFFF}")
    if leaf == Leaf.FEATURES:
        parts = _names(PartitionPrivilege, r.eax | (r.ebx << 32)) + _names(Feature, r.edx)
        if r.ecx:
            parts.append(f"power ecx={r.ecx:#x}")
        return ", ".join(parts)
    if leaf == Leaf.RECOMMENDATIONS:
        parts = _names(Recommendation, r.eax)
        if r.eax or r.ebx:
            parts.append("spin never" if r.ebx == 0xFFFFFFFF else f"spin {r.ebx:#x}")
        return ", ".join(parts)
    if leaf == Leaf.LIMITS:
        return f"max VPs {r.eax:#x}, max LPs {r.ebx:#x}" if r.eax or r.ebx else ""
    if leaf == Leaf.HARDWARE_FEATURES:
        return ", ".join(_names(HardwareFeature, r.eax))
    if leaf == Leaf.NESTED_OPTIMIZATIONS and r.eax:
        return ", ".join([f"eVMCS {r.eax & 0xFFFF:#06x}", *_names(NestedOptimization, r.eax & ~0xFFFF)])
    return ""


def _print_table(leaves: dict[int, CpuidRegs], style: str, guest_os_id: int) -> None:
    from rich.console import Console
    from rich.table import Table

    title = f"Hyper-V CPUID ({style} rules, guest OS ID {guest_os_id:#x})"
    table = Table(title=title)
    for column in ("leaf", "eax", "ebx", "ecx", "edx"):
        table.add_column(column, no_wrap=True, style="cyan" if column == "leaf" else None)
    table.add_column("decoded", overflow="fold")
    for leaf, r in sorted(leaves.items()):
        table.add_row(f"{leaf:08x}", *(f"{v:08x}" for v in (r.eax, r.ebx, r.ecx, r.edx)), decode(leaf, r))
    Console().print(table)

