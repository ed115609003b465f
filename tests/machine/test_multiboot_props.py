"""Multiboot header parsing (engine-free): a.out kludge, required flags, hostile headers."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from viridian.errors import UserError
from viridian.machine.multiboot import HEADER_MAGIC, build_info, find_header, parse


def header(flags: int, *fields: int) -> bytes:
    return struct.pack("<III", HEADER_MAGIC, flags, -(HEADER_MAGIC + flags) & 0xFFFFFFFF) + \
        struct.pack(f"<{len(fields)}I", *fields)


def test_aout_kludge_loads_at_load_addr() -> None:
    body = header(1 << 16, 0x100010, 0x100000, 0, 0x104000, 0x100020)  # header at +0x10 of the image
    blob = b"\x90" * 16 + body + b"\xcc" * 100
    off = find_header(blob)
    assert off == 16
    entry, segs = parse("k", blob, off)
    assert entry == 0x100020 and segs[0][0] == 0x100000 and segs[0][1] == blob and segs[0][2] == 0x4000


def test_video_mode_is_refused_clearly() -> None:
    blob = header(4) + bytes(64)
    with pytest.raises(UserError, match="video mode"):
        parse("k", blob, 0)


def test_bad_checksum_is_not_a_header() -> None:
    blob = struct.pack("<III", HEADER_MAGIC, 0, 1) + bytes(32)
    assert find_header(blob) is None


def test_info_structure() -> None:
    ram = memoryview(bytearray(1 << 21))
    addr = build_info(ram, 64 << 20, 0x1F000)
    flags, lower, upper = struct.unpack_from("<III", ram, addr)
    assert flags & 0x245 == 0x245 and lower == 640 and upper == (63 << 20) // 1024
    assert struct.unpack_from("<I", ram, addr + 16)[0] == 0x1F000
    length, mmap = struct.unpack_from("<II", ram, addr + 44)
    entries = [struct.unpack_from("<IQQI", ram, mmap + i) for i in range(0, length, 24)]
    assert entries[0][1:] == (0, 0x20000, 2) and entries[-1][1:] == (0x100000, (63 << 20), 1)


@given(st.binary(max_size=300), st.integers(0, 0xFFFFFFFF), st.lists(st.integers(0, 0xFFFFFFFF), max_size=5))
def test_hostile_headers_give_a_user_error_or_segments(junk: bytes, flags: int, fields: list[int]) -> None:
    blob = header(flags, *fields) + junk
    try:
        _entry, segs = parse("k", blob, 0)
    except UserError:
        return
    assert all(len(d) <= m for _, d, m in segs)
