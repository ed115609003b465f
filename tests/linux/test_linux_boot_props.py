"""Linux boot protocol (engine-free): setup header parsing, hostile headers, the zero page, ACPI tables."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from viridian.errors import UserError
from viridian.machine import layout as L
from viridian.machine.acpi import build_acpi
from viridian.machine.linux_boot import (
    E820_RAM,
    OFF_ACPI_RSDP,
    OFF_E820_ENTRIES,
    OFF_E820_TABLE,
    ZERO_PAGE,
    e820_map,
    install,
    load_linux,
    parse_setup_header,
)


def bzimage(*, version: int = 0x020F, setup_sects: int = 4, xlf: int = 1, loadflags: int = 1,
            pref: int = 0x100_0000, align: int = 0x20_0000, init_size: int = 0x40_0000, body: int = 4096) -> bytes:
    blob = bytearray((setup_sects + 1) * 512 + body)
    blob[0x1F1] = setup_sects
    struct.pack_into("<H", blob, 0x1FE, 0xAA55)
    blob[0x200:0x202] = b"\xeb\x66"  # jump: header ends at 0x202 + 0x66
    blob[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", blob, 0x206, version)
    blob[0x211] = loadflags
    struct.pack_into("<I", blob, 0x22C, 0x7FFF_FFFF)
    struct.pack_into("<I", blob, 0x230, align)
    blob[0x234] = 1
    struct.pack_into("<HI", blob, 0x236, xlf, 2047)
    struct.pack_into("<QI", blob, 0x258, pref, init_size)
    return bytes(blob)


def test_header_fields() -> None:
    hdr = parse_setup_header("k", bzimage())
    assert hdr.version == 0x020F and hdr.kernel_offset == 5 * 512 and hdr.pref_address == 0x100_0000
    assert hdr.init_size == 0x40_0000 and len(hdr.raw) == 0x202 + 0x66 - 0x1F1


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"version": 0x020B}, "older than 2.12"),
    ({"xlf": 0}, "XLF_KERNEL_64"),
    ({"loadflags": 0}, "zImage"),
    ({"align": 0x30_0000}, "power of two"),
    ({"init_size": 0}, "init_size"),
])
def test_unbootable_headers_are_clear_errors(kwargs: dict[str, int], match: str) -> None:
    with pytest.raises(UserError, match=match):
        parse_setup_header("k", bzimage(**kwargs))


def test_not_a_bzimage() -> None:
    with pytest.raises(UserError, match="not a Linux bzImage"):
        parse_setup_header("k", bytes(4096))
    with pytest.raises(UserError, match="too short"):
        parse_setup_header("k", b"MZ")


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=0x400), st.data())
def test_hostile_headers_never_crash(noise: bytes, data: st.DataObject) -> None:
    blob = bytearray(bzimage(body=64))
    start = data.draw(st.integers(0x1F0, 0x268))
    blob[start : start + len(noise)] = noise[: max(0, len(blob) - start)]
    try:
        hdr = parse_setup_header("k", bytes(blob))
    except UserError:
        return
    assert hdr.kernel_offset < len(blob) and hdr.init_size > 0


def test_zero_page_and_tables(tmp_path: Path) -> None:
    k = tmp_path / "bzImage"
    k.write_bytes(bzimage())
    rd = tmp_path / "initrd"
    rd.write_bytes(b"070701" + bytes(5000))
    image = load_linux(k, rd)
    assert image.kind == "linux" and image.entry == 0x100_0200 and image.segments[0].paddr == 0x100_0000
    size = 64 << 20
    ram = memoryview(bytearray(size))
    zp = install(image.linux, ram, size, 2, "console=ttyS0")
    assert zp == ZERO_PAGE
    page = bytes(ram[zp : zp + 4096])
    assert page[0x210] == 0xFF and page[0x1FE:0x200] == b"\x55\xaa" and page[0x202:0x206] == b"HdrS"
    cmd, = struct.unpack_from("<I", page, 0x228)
    assert bytes(ram[cmd : cmd + 14]) == b"console=ttyS0\0"
    rd_at, rd_size = struct.unpack_from("<II", page, 0x218)
    assert rd_size == 5006 and rd_at % 4096 == 0 and rd_at + rd_size <= L.reserved_top(2, size)
    assert bytes(ram[rd_at : rd_at + 6]) == b"070701"
    n = page[OFF_E820_ENTRIES]
    table = [struct.unpack_from("<QQI", page, OFF_E820_TABLE + 20 * i) for i in range(n)]
    assert table == e820_map(size, 2)
    ram_ranges = [(b, b + ln) for b, ln, t in table if t == E820_RAM]
    for lo, hi in ram_ranges:  # nothing the loader uses is reported usable
        assert hi <= 0x9FC00 or lo >= 0x100000
        assert lo >= L.IMAGE_MIN and hi <= L.reserved_top(2, size)
    rsdp, = struct.unpack_from("<Q", page, OFF_ACPI_RSDP)
    assert bytes(ram[rsdp : rsdp + 8]) == b"RSD PTR "


def _table(ram: memoryview, addr: int) -> bytes:
    length, = struct.unpack_from("<I", ram, addr + 4)
    return bytes(ram[addr : addr + length])


@pytest.mark.parametrize("vcpus", [1, 4, 255])
def test_acpi_checksums_and_madt(vcpus: int) -> None:
    ram = memoryview(bytearray(0x100000))
    rsdp = build_acpi(ram, 0xE0000, vcpus)
    r = bytes(ram[rsdp : rsdp + 36])
    assert sum(r[:20]) & 0xFF == 0 and sum(r) & 0xFF == 0 and r[15] == 2
    xsdt = _table(ram, struct.unpack_from("<Q", r, 24)[0])
    assert xsdt[:4] == b"XSDT" and sum(xsdt) & 0xFF == 0
    entries = [_table(ram, struct.unpack_from("<Q", xsdt, 36 + 8 * i)[0]) for i in range((len(xsdt) - 36) // 8)]
    madt, = (t for t in entries if t[:4] == b"APIC")  # the XSDT also lists the FADT (tests/linux/test_linux_acpi.py)
    assert sum(madt) & 0xFF == 0
    lapic_addr, flags = struct.unpack_from("<II", madt, 36)
    assert lapic_addr == L.APIC_BASE and flags == 0
    entries = [struct.unpack_from("<BBBBI", madt, 44 + 8 * i) for i in range((len(madt) - 44) // 8)]
    assert [(t, uid, aid, f) for t, _ln, uid, aid, f in entries] == [(0, i, i, 1) for i in range(vcpus)]


def test_kernel_that_does_not_fit_is_a_user_error(tmp_path: Path) -> None:
    k = tmp_path / "bzImage"
    k.write_bytes(bzimage(init_size=0x800_0000))
    image = load_linux(k)
    size = 32 << 20
    with pytest.raises(UserError, match="raise --mem"):
        install(image.linux, memoryview(bytearray(size)), size, 1, "")
