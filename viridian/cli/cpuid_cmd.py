"""``viridian cpuid``: show the hypervisor CPUID leaves a configuration offers."""

from __future__ import annotations

import argparse
from enum import IntFlag
from typing import Any

from viridian.cli.grammar import add_json_options, emit_json
from viridian.config.cpuid_edits import parse_edit
from viridian.config.presets import PRESETS, load_config
from viridian.config.qemu import parse_int
from viridian.partition.cpuid import CpuidRegs, hv_leaves
from viridian.tlfs.cpuid import (
    HV_INTERFACE_SIGNATURE,
    IMPLEMENTED_PA_BITS_MASK,
    SPINLOCK_NEVER_NOTIFY,
    Feature,
    HardwareFeature,
    Leaf,
    NestedFeature,
    NestedOptimization,
    NestedPrivilege,
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
    parser.add_argument("--cpuid", action="append", default=[], metavar="EDIT",
                        help="edit a leaf after synthesis: LEAF.REG+BITS / -BITS / =VALUE (repeatable)")
    add_json_options(parser, "the leaves")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Resolve the config, synthesize the leaves, print them."""
    config = load_config(hv=args.hv, xen=args.xen, libvirt_path=args.libvirt, preset=args.preset)
    if args.cpuid:
        config = config.replace(cpuid_edits=tuple(parse_edit(e) for e in args.cpuid))
    guest_os_id = parse_int("--guest-os-id", args.guest_os_id, 64)
    leaves = hv_leaves(config, guest_os_id)
    if emit_json(args, to_json(leaves), indent=None):
        return 0
    _print_table(leaves, config.style, guest_os_id)
    return 0


def to_json(leaves: dict[int, CpuidRegs]) -> dict[str, dict[str, int]]:
    """``{"0x40000000": {"eax": .., "ebx": .., "ecx": .., "edx": ..}, ...}`` in leaf order."""
    return {f"{leaf:#010x}": {"eax": r.eax, "ebx": r.ebx, "ecx": r.ecx, "edx": r.edx}
            for leaf, r in sorted(leaves.items())}


def _names(flags: type[IntFlag], value: int, shift: int = 0) -> list[str]:
    """Names of the set bits of ``value`` (bit n of ``value`` is bit n + ``shift`` of ``flags``; unknown
    bits as ``bitN``)."""
    known = {int(m): str(m.name).removeprefix("ACCESS_").lower()
             for m in flags.__members__.values() if int(m) and not int(m) & (int(m) - 1)}
    return [known.get(1 << (bit + shift), f"bit{bit}") for bit in range(32) if value >> bit & 1]


Decoded = list[tuple[str, list[str]]]  # (register, one item per set bit / field), in register order


def decode_registers(leaf: int, r: CpuidRegs) -> Decoded:
    """The human reading of one leaf, register by register; empty when there is nothing to say."""
    if leaf == Leaf.VENDOR_AND_MAX:
        if not r.eax:
            return []
        return [("eax", [f"max leaf {r.eax:#x}"]), ("ebx-edx", [f"vendor {vendor_string(r.ebx, r.ecx, r.edx)!r}"])]
    if leaf == Leaf.INTERFACE:
        if r.eax == HV_INTERFACE_SIGNATURE:
            return [("eax", ["interface 'Hv#1'"])]
        return [("eax", [f"interface {r.eax:#x} (not Hv#1)"])] if r.eax else []
    if leaf == Leaf.VERSION:
        if not any((r.eax, r.ebx, r.ecx, r.edx)):
            return []
        return [("eax-edx", [f"version {r.ebx >> 16}.{r.ebx & 0xFFFF}.{r.eax}",
                             f"service pack {r.ecx}, branch {r.edx >> 24}, number {r.edx & 0xFFFFFF}"])]
    if leaf == Leaf.FEATURES:
        out = [("eax", _names(PartitionPrivilege, r.eax)), ("ebx", _names(PartitionPrivilege, r.ebx, 32)),
               ("ecx", [f"power/misc {r.ecx:#x}"] if r.ecx else []), ("edx", _names(Feature, r.edx))]
        return [(reg, items) for reg, items in out if items]
    if leaf == Leaf.RECOMMENDATIONS:
        if not (r.eax or r.ebx):
            return []
        spin = "spinlock retries: never notify" if r.ebx == SPINLOCK_NEVER_NOTIFY else f"spinlock retries {r.ebx:#x}"
        out = [("eax", _names(Recommendation, r.eax)), ("ebx", [spin]),
               ("ecx", [f"physical address bits {r.ecx & IMPLEMENTED_PA_BITS_MASK}"] if r.ecx else [])]
        return [(reg, items) for reg, items in out if items]
    if leaf == Leaf.LIMITS:
        if not (r.eax or r.ebx or r.ecx):
            return []
        out = [("eax", [f"max VPs {r.eax:#x}"]), ("ebx", [f"max LPs {r.ebx:#x}"]),
               ("ecx", [f"remappable vectors {r.ecx:#x}"] if r.ecx else [])]
        return [(reg, items) for reg, items in out if items]
    if leaf == Leaf.HARDWARE_FEATURES and r.eax:
        return [("eax", _names(HardwareFeature, r.eax))]
    if leaf == Leaf.NESTED_FEATURES:
        out = [("eax", _names(NestedPrivilege, r.eax)), ("edx", _names(NestedFeature, r.edx))]
        return [(reg, items) for reg, items in out if items]
    if leaf == Leaf.NESTED_OPTIMIZATIONS and r.eax:
        evmcs = [f"eVMCS versions {r.eax & 0xFF}..{r.eax >> 8 & 0xFF}"] if r.eax & 0xFFFF else []
        return [("eax", [*evmcs, *_names(NestedOptimization, r.eax & ~0xFFFF)])]
    return []


def decode(leaf: int, r: CpuidRegs) -> str:
    """A one-line human reading of one leaf."""
    return "; ".join(f"{reg}: {', '.join(items)}" for reg, items in decode_registers(leaf, r))


def render_text(leaves: dict[int, CpuidRegs], style: str, guest_os_id: int) -> list[str]:
    """The human output as plain lines, none wider than 80 columns for any configuration: a fixed-width
    table of the raw registers, then the decoding below it, one bit name per line."""
    lines = [f"Hyper-V CPUID leaves ({style} rules, guest OS ID {guest_os_id:#x})", "",
             "leaf      eax       ebx       ecx       edx", "--------  --------  --------  --------  --------"]
    for leaf, r in sorted(leaves.items()):
        lines.append(f"{leaf:08x}  " + "  ".join(f"{v:08x}" for v in (r.eax, r.ebx, r.ecx, r.edx)))
    decoded = [(leaf, decode_registers(leaf, r)) for leaf, r in sorted(leaves.items())]
    decoded = [(leaf, regs) for leaf, regs in decoded if regs]
    lines += ["", "decoded:" if decoded else "decoded: no Hyper-V interface offered (every leaf reads 0)"]
    for leaf, regs in decoded:
        head = f"{leaf:08x}"
        for reg, items in regs:
            for item in items:
                lines.append(f"{head:<8}  {reg:<7}  {_clip(item)}")
                head = reg = ""
    return lines


def _clip(text: str, width: int = 80 - 19) -> str:
    """Keep a decoded item inside 80 columns (only a hostile vendor string could be longer)."""
    return text if len(text) <= width else text[: width - 3] + "..."


def _print_table(leaves: dict[int, CpuidRegs], style: str, guest_os_id: int) -> None:
    # Plain text, no rich markup: a vendor string like "[red]x" must print as itself.
    print("\n".join(render_text(leaves, style, guest_os_id)))
