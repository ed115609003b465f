"""``viridian guests [--json]``: the guest images shipped with viridian and where they are."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from viridian.cli.grammar import add_json_options, emit_json

_ABOUT = {
    "conformance": "TLFS conformance suite (multiboot; also boots on QEMU/KVM, Xen, Hyper-V)",
    "lab": "exit-reduction lab guest (viridian measure)",
    "ws2008": "Windows Server 2008-style guest",
    "win7": "Windows 7-style guest",
    "win8": "Windows 8-style guest",
    "win10": "Windows 10-style guest",
    "linux": "Linux-style guest (Hyper-V guest OS ID of a Linux kernel)",
    "initramfs": "initramfs for real Linux boots (viridian boot --initrd)",
}


def register(subparsers: Any) -> None:
    """Add the ``guests`` subcommand."""
    p = subparsers.add_parser("guests", help="list the guest images shipped with viridian and their paths",
                              description="List the guest images this installation ships. Any command that "
                              "takes an IMAGE also accepts a guest's name (e.g. 'viridian run win7').")
    add_json_options(p, "the list")
    p.set_defaults(func=run)


def _entry(path: Path) -> dict[str, Any]:
    name = path.stem if path.suffix == ".elf" else path.name
    return {"name": name, "path": str(path), "bytes": path.stat().st_size,
            "about": _ABOUT.get(path.stem, "machine test guest (fixtures/guests/machine)")}


def run(args: argparse.Namespace) -> int:
    """Print one line per shipped guest (name, path, what it is), or the same as JSON."""
    from viridian.errors import UserError
    from viridian.guests import guest_dir, runtime_dir, shipped_guests

    entries = [_entry(p) for p in shipped_guests()]
    if not entries:
        raise UserError(f"no guests found in {guest_dir()} (this installation ships none)")
    if emit_json(args, {"guests": entries, "directory": str(guest_dir()), "runtime": str(runtime_dir())}):
        return 0
    width = max(len(e["name"]) for e in entries)
    for e in entries:
        print(f"{e['name']:<{width}}  {e['path']}  {e['about']}")
    print(f"assembler runtime (guest.inc, guest.ld): {runtime_dir()}")
    return 0
