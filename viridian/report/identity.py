"""One-line description of a guest OS ID value (the one decoder: viridian.tlfs.guest_os_id, as
``viridian guest-os-id`` prints it), plus the release it names when known."""

from __future__ import annotations

from viridian.tlfs.guest_os_id import decode


def describe_os(value: int) -> str:
    """e.g. "Microsoft Windows NT 6.1 build 7600 (Windows 7 / Windows Server 2008 R2)" or
    "Linux 6.1.192 (open source, build 0)"."""
    d = decode(value)
    return d.describe() + (f" ({d.release})" if d.release else "")
