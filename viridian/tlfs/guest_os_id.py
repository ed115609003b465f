"""HV_X64_MSR_GUEST_OS_ID encode/decode (TLFS hypercall-interface.md "Reporting the Guest OS Identity").

Bit 63 selects the encoding. Proprietary (0): 15:0 build, 23:16 service version, 31:24 minor, 39:32 major,
47:40 OS ID, 62:48 vendor. Open source (1): 15:0 build, 47:16 version, 55:48 OS ID, 62:56 OS type.
The hypervisor ignores the value beyond "non-zero" (it gates the hypercall page); decoding is for humans.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Final, Literal

from viridian.tlfs.layouts import GUEST_OS_ID_OPEN_SOURCE, GUEST_OS_ID_PROPRIETARY, pack64, unpack64

__all__ = [
    "HV_LINUX_VENDOR_ID",
    "KNOWN_WINDOWS_RELEASES",
    "WINDOWS_GENERATIONS",
    "GuestOsId",
    "MicrosoftOsId",
    "OpenSourceOsType",
    "Vendor",
    "decode",
    "linux",
    "microsoft",
    "open_source",
]


class Vendor(IntEnum):
    """Proprietary vendor IDs, bits 62:48 (0 is reserved)."""

    MICROSOFT = 0x0001
    HPE = 0x0002
    BLACKBERRY = 0x0003
    LANCOM = 0x0200


class MicrosoftOsId(IntEnum):
    """OS IDs, bits 47:40, defined for vendor Microsoft."""

    UNDEFINED = 0
    MSDOS = 1
    WINDOWS_3X = 2
    WINDOWS_9X = 3
    WINDOWS_NT = 4
    WINDOWS_CE = 5


class OpenSourceOsType(IntEnum):
    """Open-source OS types, bits 62:56."""

    LINUX = 1
    FREEBSD = 2
    XEN = 3
    ILLUMOS = 4


_VENDOR_NAMES: Final[dict[int, str]] = {
    Vendor.MICROSOFT: "Microsoft",
    Vendor.HPE: "HPE",
    Vendor.BLACKBERRY: "BlackBerry",
    Vendor.LANCOM: "LANCOM",
}
_MS_OS_NAMES: Final[dict[int, str]] = {
    MicrosoftOsId.UNDEFINED: "undefined OS",
    MicrosoftOsId.MSDOS: "MS-DOS",
    MicrosoftOsId.WINDOWS_3X: "Windows 3.x",
    MicrosoftOsId.WINDOWS_9X: "Windows 9x",
    MicrosoftOsId.WINDOWS_NT: "Windows NT",
    MicrosoftOsId.WINDOWS_CE: "Windows CE",
}
_OPEN_SOURCE_NAMES: Final[dict[int, str]] = {
    OpenSourceOsType.LINUX: "Linux",
    OpenSourceOsType.FREEBSD: "FreeBSD",
    OpenSourceOsType.XEN: "Xen",
    OpenSourceOsType.ILLUMOS: "Illumos",
}

# Linux writes HV_LINUX_VENDOR_ID << 48 | LINUX_VERSION_CODE << 16 (hv_generate_guest_id, include/asm-generic/
# mshyperv.h): 0x8100 = open source (bit 63) + OS type Linux (1) + OS ID 0.
HV_LINUX_VENDOR_ID: Final = 0x8100

# Windows NT releases by (major, minor, build). Microsoft does not publish the values Windows writes; these
# follow from the encoding (vendor 1, OS ID 4) and the public build numbers (reference digest §8, [UNSURE]).
KNOWN_WINDOWS_RELEASES: Final[dict[tuple[int, int, int], str]] = {
    (6, 0, 6000): "Windows Vista",
    (6, 0, 6001): "Windows Vista SP1 / Windows Server 2008",
    (6, 0, 6002): "Windows Vista SP2 / Windows Server 2008 SP2",
    (6, 1, 7600): "Windows 7 / Windows Server 2008 R2",
    (6, 1, 7601): "Windows 7 SP1 / Windows Server 2008 R2 SP1",
    (6, 2, 9200): "Windows 8 / Windows Server 2012",
    (6, 3, 9600): "Windows 8.1 / Windows Server 2012 R2",
    (10, 0, 10240): "Windows 10 1507",
    (10, 0, 14393): "Windows 10 1607 / Windows Server 2016",
    (10, 0, 17763): "Windows 10 1809 / Windows Server 2019",
    (10, 0, 19041): "Windows 10 2004",
    (10, 0, 20348): "Windows Server 2022",
    (10, 0, 22000): "Windows 11 21H2",
}

Kind = Literal["not set", "proprietary", "open source"]


@dataclass(frozen=True, slots=True)
class GuestOsId:
    """A decoded guest OS ID. Fields that do not exist in the value's encoding are None."""

    value: int
    kind: Kind
    build: int = 0
    os_id: int = 0
    # proprietary encoding
    vendor: int | None = None
    major: int | None = None
    minor: int | None = None
    service_version: int | None = None
    # open-source encoding
    os_type: int | None = None
    version: int | None = None
    # well-known Windows release with this major.minor.build (Microsoft Windows NT only)
    release: str | None = None

    @property
    def vendor_name(self) -> str | None:
        """Vendor name (proprietary) or ``vendor 0x....`` for an unknown vendor."""
        if self.vendor is None:
            return None
        return _VENDOR_NAMES.get(self.vendor, f"vendor {self.vendor:#06x}")

    @property
    def os_name(self) -> str | None:
        """OS name: Microsoft OS ID name, or the open-source OS type name; ``OS n`` when unknown."""
        if self.kind == "proprietary" and self.vendor == Vendor.MICROSOFT:
            return _MS_OS_NAMES.get(self.os_id, f"OS {self.os_id}")
        if self.kind == "proprietary":
            return f"OS {self.os_id}"
        if self.kind == "open source" and self.os_type is not None:
            return _OPEN_SOURCE_NAMES.get(self.os_type, f"OS type {self.os_type}")
        return None

    @property
    def version_text(self) -> str | None:
        """``major.minor`` (proprietary), ``a.b.c`` (Linux kernel version code), else the version number."""
        if self.kind == "proprietary":
            return f"{self.major}.{self.minor}"
        if self.kind == "open source" and self.version is not None:
            if self.os_type == OpenSourceOsType.LINUX:
                v = self.version
                return f"{v >> 16}.{(v >> 8) & 0xFF}.{v & 0xFF}"
            return str(self.version)
        return None

    def describe(self) -> str:
        """One line, e.g. ``Microsoft Windows NT 6.1 build 7600`` or ``Linux 6.1.0 (open source, build 0)``."""
        if self.kind == "not set":
            return "not set"
        if self.kind == "proprietary":
            text = f"{self.vendor_name} {self.os_name} {self.version_text} build {self.build}"
            if self.service_version:
                text += f" service version {self.service_version}"
            return text
        extra = f", os id {self.os_id:#04x}" if self.os_id else ""
        return f"{self.os_name} {self.version_text} (open source, build {self.build}{extra})"

    def as_dict(self) -> dict[str, object]:
        """The decoded fields for JSON: names as in the dataclass plus names, version text and description."""
        out: dict[str, object] = {"value": f"{self.value:#018x}", "kind": self.kind}
        if self.kind == "proprietary":
            out |= {
                "vendor": self.vendor,
                "vendor_name": self.vendor_name,
                "os_id": self.os_id,
                "os_name": self.os_name,
                "major": self.major,
                "minor": self.minor,
                "service_version": self.service_version,
                "build": self.build,
                "release": self.release,
            }
        elif self.kind == "open source":
            out |= {
                "os_type": self.os_type,
                "os_name": self.os_name,
                "os_id": self.os_id,
                "version": self.version,
                "version_text": self.version_text,
                "build": self.build,
            }
        out["description"] = self.describe()
        return out


def decode(value: int) -> GuestOsId:
    """Decode a guest OS ID register value (0 <= value < 2**64, else ValueError)."""
    if not 0 <= value < 1 << 64:
        raise ValueError(f"guest OS ID {value:#x} is not a 64-bit value")
    if value == 0:
        return GuestOsId(value=0, kind="not set")
    if value >> 63 == 0:
        f = unpack64(GUEST_OS_ID_PROPRIETARY, value)
        release = None
        if f.vendor == Vendor.MICROSOFT and f.os_id == MicrosoftOsId.WINDOWS_NT:
            release = KNOWN_WINDOWS_RELEASES.get((f.major, f.minor, f.build))
        return GuestOsId(
            value=value,
            kind="proprietary",
            build=f.build,
            os_id=f.os_id,
            vendor=f.vendor,
            major=f.major,
            minor=f.minor,
            service_version=f.service_version,
            release=release,
        )
    f = unpack64(GUEST_OS_ID_OPEN_SOURCE, value)
    return GuestOsId(
        value=value, kind="open source", build=f.build, os_id=f.os_id, os_type=f.os_type, version=f.version
    )


def microsoft(
    major: int,
    minor: int,
    build: int,
    sp: int = 0,
    os: int = MicrosoftOsId.WINDOWS_NT,
    vendor: int = Vendor.MICROSOFT,
) -> int:
    """Proprietary-encoding guest OS ID (ValueError if a field does not fit)."""
    return pack64(
        GUEST_OS_ID_PROPRIETARY,
        vendor=vendor,
        os_id=os,
        major=major,
        minor=minor,
        service_version=sp,
        build=build,
    )


def open_source(os_type: int, version: int, build: int = 0, os_id: int = 0) -> int:
    """Open-source-encoding guest OS ID (ValueError if a field does not fit)."""
    return pack64(
        GUEST_OS_ID_OPEN_SOURCE, open_source=True, os_type=os_type, os_id=os_id, version=version, build=build
    )


def linux(kernel_version: tuple[int, ...]) -> int:
    """The value Linux writes for kernel ``(major, minor[, patch])``: LINUX_VERSION_CODE in bits 47:16.

    As Linux's KERNEL_VERSION macro, the patch level saturates at 255."""
    if not 2 <= len(kernel_version) <= 3:
        raise ValueError(f"kernel version {kernel_version!r} must be (major, minor[, patch])")
    major, minor, patch = (*kernel_version, 0)[:3]
    if not (0 <= major <= 0xFFFF and 0 <= minor <= 0xFF and patch >= 0):
        raise ValueError(f"kernel version {kernel_version!r} out of range")
    code = (major << 16) | (minor << 8) | min(patch, 255)
    return open_source(OpenSourceOsType.LINUX, code)


# Guest OS IDs of representative Windows generations. win10 is 10.0.14393 (Windows 10 1607 / Server 2016),
# the version KVM reports in CPUID 0x40000002 (EAX=0x3839, EBX=0x000A0000; KVM hyperv.c).
WINDOWS_GENERATIONS: Final[dict[str, int]] = {
    "ws2008": microsoft(6, 0, 6001, sp=1),
    "win7": microsoft(6, 1, 7600),
    "win8": microsoft(6, 2, 9200),
    "win10": microsoft(10, 0, 14393),
}
