"""``viridian guest-os-id VALUE [--json]``: decode a HV_X64_MSR_GUEST_OS_ID value."""

from __future__ import annotations

import argparse
import json
import string
from typing import Any

from viridian.errors import UserError
from viridian.tlfs.guest_os_id import GuestOsId, decode

_LABELS = {
    "value": "value",
    "kind": "encoding",
    "vendor_name": "vendor",
    "os_name": "os",
    "os_id": "os id",
    "version_text": "version",
    "version": "version code",
    "major": "major",
    "minor": "minor",
    "service_version": "service version",
    "build": "build",
    "release": "release",
}


def register(subparsers: Any) -> None:
    """Add the ``guest-os-id`` subcommand."""
    parser = subparsers.add_parser(
        "guest-os-id",
        help="decode a guest OS ID (HV_X64_MSR_GUEST_OS_ID) value",
        description="Decode a guest OS ID register value (TLFS 'Reporting the Guest OS Identity').",
    )
    parser.add_argument("value", metavar="VALUE", help="64-bit value: hex with 0x prefix, or decimal")
    parser.add_argument("--json", action="store_true", help="print the decoded fields as JSON")
    parser.set_defaults(func=run)


def parse_value(text: str) -> int:
    """Parse VALUE: ``0x`` hex (``_`` and WinDbg's ``\\``` separators allowed) or decimal; UserError if not."""
    raw = text.strip().replace("`", "").replace("_", "")
    try:
        if raw.lower().startswith("0x"):
            value = int(raw[2:], 16)
        elif raw.isdigit():
            value = int(raw, 10)
        elif raw and all(c in string.hexdigits for c in raw):
            raise UserError(f"{text!r} is not a decimal number; write hex with a 0x prefix (0x{raw})")
        else:
            raise ValueError(text)
    except ValueError:
        raise UserError(f"{text!r} is not a number; give hex with a 0x prefix or decimal") from None
    if not 0 <= value < 1 << 64:
        raise UserError(f"{text!r} does not fit in 64 bits")
    return value


def _rows(decoded: GuestOsId) -> list[tuple[str, str]]:
    fields = decoded.as_dict()
    rows: list[tuple[str, str]] = []
    for key, label in _LABELS.items():
        if key not in fields or fields[key] is None or (key == "os_id" and decoded.kind == "proprietary"):
            continue
        value = fields[key]
        if key == "vendor_name" and decoded.vendor is not None:
            value = f"{value} ({decoded.vendor:#06x})"
        elif key == "os_name" and decoded.kind == "proprietary":
            value = f"{value} ({decoded.os_id})"
        elif key == "os_name" and decoded.os_type is not None:
            value = f"{value} ({decoded.os_type})"
        elif key == "version" and decoded.version is not None:
            value = f"{decoded.version:#x}"
        rows.append((label, str(value)))
    return rows


def run(args: argparse.Namespace) -> int:
    """Print the decoded guest OS ID as a table plus description, or as JSON."""
    decoded = decode(parse_value(args.value))
    if args.json:
        print(json.dumps(decoded.as_dict(), indent=2))
        return 0
    rows = _rows(decoded)
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    print(decoded.describe())
    return 0
