"""Guest OS ID decode/encode against the values listed in the reference digest (§8)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from viridian.tlfs import guest_os_id as g

# (value, description, release) -- values from the digest's Windows table (derived from the encoding).
WINDOWS = [
    (0x0001040600001770, "Microsoft Windows NT 6.0 build 6000", "Windows Vista"),
    (
        0x0001040600011771,
        "Microsoft Windows NT 6.0 build 6001 service version 1",
        "Windows Vista SP1 / Windows Server 2008",
    ),
    (
        0x0001040600021772,
        "Microsoft Windows NT 6.0 build 6002 service version 2",
        "Windows Vista SP2 / Windows Server 2008 SP2",
    ),
    (0x0001040601001DB0, "Microsoft Windows NT 6.1 build 7600", "Windows 7 / Windows Server 2008 R2"),
    (
        0x0001040601011DB1,
        "Microsoft Windows NT 6.1 build 7601 service version 1",
        "Windows 7 SP1 / Windows Server 2008 R2 SP1",
    ),
    (0x00010406020023F0, "Microsoft Windows NT 6.2 build 9200", "Windows 8 / Windows Server 2012"),
    (0x0001040603002580, "Microsoft Windows NT 6.3 build 9600", "Windows 8.1 / Windows Server 2012 R2"),
    (0x0001040A00002800, "Microsoft Windows NT 10.0 build 10240", "Windows 10 1507"),
    (0x0001040A00003839, "Microsoft Windows NT 10.0 build 14393", "Windows 10 1607 / Windows Server 2016"),
    (0x0001040A00004563, "Microsoft Windows NT 10.0 build 17763", "Windows 10 1809 / Windows Server 2019"),
    (0x0001040A00004A61, "Microsoft Windows NT 10.0 build 19041", "Windows 10 2004"),
    (0x0001040A00004F7C, "Microsoft Windows NT 10.0 build 20348", "Windows Server 2022"),
    (0x0001040A000055F0, "Microsoft Windows NT 10.0 build 22000", "Windows 11 21H2"),
]


@pytest.mark.parametrize(("value", "text", "release"), WINDOWS)
def test_windows_values(value: int, text: str, release: str) -> None:
    d = g.decode(value)
    assert d.kind == "proprietary"
    assert d.describe() == text
    assert d.release == release
    assert g.microsoft(d.major or 0, d.minor or 0, d.build, sp=d.service_version or 0) == value


def test_win7_fields() -> None:
    d = g.decode(0x0001040601001DB0)
    assert (d.vendor, d.os_id, d.major, d.minor, d.service_version, d.build) == (1, 4, 6, 1, 0, 7600)
    assert (d.vendor_name, d.os_name, d.version_text) == ("Microsoft", "Windows NT", "6.1")
    assert d.os_type is None and d.version is None


def test_not_set() -> None:
    d = g.decode(0)
    assert d.kind == "not set" and d.describe() == "not set"
    assert d.as_dict() == {"value": "0x0000000000000000", "kind": "not set", "description": "not set"}


def test_other_vendors_and_unknowns() -> None:
    assert g.decode(g.microsoft(1, 0, 5, os=g.MicrosoftOsId.WINDOWS_CE, vendor=g.Vendor.HPE)).describe() == (
        "HPE OS 5 1.0 build 5"
    )
    assert g.decode(0x0200_05_01_00_00_0001).vendor_name == "LANCOM"
    assert g.decode(0x0003_00_00_00_00_0000).vendor_name == "BlackBerry"
    assert g.decode(0x0001_01_06_00_00_0000).os_name == "MS-DOS"
    assert g.decode(0x0001_09_01_00_00_0000).os_name == "OS 9"
    assert g.decode(0x7FFF_04_01_00_00_0000).vendor_name == "vendor 0x7fff"
    # Windows NT 6.1 with a build not in the table: no release name.
    assert g.decode(g.microsoft(6, 1, 7000)).release is None


def test_linux_encoding_matches_hv_generate_guest_id() -> None:
    # Linux: HV_LINUX_VENDOR_ID (0x8100) << 48 | LINUX_VERSION_CODE << 16; 6.1.0 -> code 0x060100
    assert g.linux((6, 1, 0)) == 0x8100_0006_0100_0000
    assert g.linux((5, 15)) == 0x8100_0005_0F00_0000
    assert g.linux((4, 19, 300)) == 0x8100_0004_13FF_0000  # KERNEL_VERSION saturates the patch level at 255
    assert g.linux((6, 1, 0)) >> 48 == g.HV_LINUX_VENDOR_ID
    d = g.decode(g.linux((6, 1, 0)))
    assert d.kind == "open source"
    assert (d.os_type, d.os_id, d.version, d.build) == (1, 0, 0x060100, 0)
    assert d.describe() == "Linux 6.1.0 (open source, build 0)"
    with pytest.raises(ValueError):
        g.linux((6,))
    with pytest.raises(ValueError):
        g.linux((6, 256, 0))


def test_open_source() -> None:
    value = g.open_source(g.OpenSourceOsType.FREEBSD, 1400097, build=3, os_id=0x11)
    assert value == (1 << 63) | (2 << 56) | (0x11 << 48) | (1400097 << 16) | 3
    assert g.decode(value).describe() == "FreeBSD 1400097 (open source, build 3, os id 0x11)"
    assert g.decode(g.open_source(4, 1)).os_name == "Illumos"
    assert g.decode(g.open_source(3, 1)).os_name == "Xen"
    assert g.decode(g.open_source(99, 1)).os_name == "OS type 99"
    with pytest.raises(ValueError):
        g.open_source(0x80, 1)
    with pytest.raises(ValueError):
        g.open_source(1, 1 << 32)


def test_windows_generations() -> None:
    assert g.WINDOWS_GENERATIONS == {
        "ws2008": 0x0001040600011771,
        "win7": 0x0001040601001DB0,
        "win8": 0x00010406020023F0,
        "win10": 0x0001040A00003839,
    }


def test_as_dict() -> None:
    assert g.decode(0x0001040601001DB0).as_dict() == {
        "value": "0x0001040601001db0",
        "kind": "proprietary",
        "vendor": 1,
        "vendor_name": "Microsoft",
        "os_id": 4,
        "os_name": "Windows NT",
        "major": 6,
        "minor": 1,
        "service_version": 0,
        "build": 7600,
        "release": "Windows 7 / Windows Server 2008 R2",
        "description": "Microsoft Windows NT 6.1 build 7600",
    }


def test_decode_range() -> None:
    with pytest.raises(ValueError):
        g.decode(1 << 64)
    with pytest.raises(ValueError):
        g.decode(-1)
    with pytest.raises(ValueError):
        g.microsoft(256, 0, 0)


@given(st.integers(0, (1 << 64) - 1))
def test_decode_never_fails_and_re_encodes(value: int) -> None:
    d = g.decode(value)
    assert d.describe()
    if d.kind == "proprietary":
        assert (
            g.microsoft(d.major or 0, d.minor or 0, d.build, d.service_version or 0, d.os_id, d.vendor or 0)
            == value
        )
    elif d.kind == "open source":
        assert g.open_source(d.os_type or 0, d.version or 0, d.build, d.os_id) == value
