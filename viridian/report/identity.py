"""One-line description of a guest OS ID value."""

from __future__ import annotations

from viridian.tlfs.guest_os_id import decode


def describe_os(value: int) -> str:
    """e.g. "Microsoft Windows NT 6.1 build 7600 (Windows 7 / Windows Server 2008 R2)"."""
    d = decode(value)
    if d.kind == "proprietary":
        text = f"{d.vendor_name or 'vendor ' + str(d.vendor)} {d.os_name or 'OS ' + str(d.os_id)} " \
               f"{d.major}.{d.minor} build {d.build}"
    else:
        text = f"{d.os_name or 'open-source OS'} version {d.version} build {d.build}"
    return text + (f" ({d.release})" if d.release else "")
