"""Hostile images and code bytes: the loader and the site scanners answer with a result or a UserError."""

from __future__ import annotations

import contextlib
import struct
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from viridian.errors import UserError
from viridian.machine.loader import load_image, place_image
from viridian.machine.stubs import cr8_offsets, pause_offsets, site_offsets


def _elf(phdrs: list[tuple[int, int, int, int, int]], entry: int = 0x100000, tail: bytes = b"") -> bytes:
    head = bytearray(64)
    head[:4] = b"\x7fELF"
    head[4], head[5] = 2, 1
    struct.pack_into("<HH", head, 16, 2, 0x3E)
    struct.pack_into("<QQ", head, 24, entry, 64)
    struct.pack_into("<HH", head, 54, 56, len(phdrs))
    body = b"".join(struct.pack("<IIQQQQQQ", t, 5, off, pa, pa, fs, ms, 0x1000) for t, off, pa, fs, ms in phdrs)
    return bytes(head) + body + tail


@given(st.binary(min_size=1, max_size=256))
def test_random_images_load_or_refuse(tmp_path_factory: object, blob: bytes) -> None:
    path = Path(str(tmp_path_factory.mktemp("img"))) / "g"  # type: ignore[attr-defined]
    path.write_bytes(b"\x7fELF" + blob)
    with contextlib.suppress(UserError):
        load_image(path)


@given(st.lists(st.tuples(st.sampled_from([1, 2, 6]), st.integers(0, 4096), st.integers(0, 1 << 40),
                          st.integers(0, 8192), st.integers(0, 1 << 33)), max_size=4))
def test_random_segments_fit_or_refuse(tmp_path_factory: object, phdrs: list[tuple[int, int, int, int, int]]) -> None:
    path = Path(str(tmp_path_factory.mktemp("img"))) / "g"  # type: ignore[attr-defined]
    path.write_bytes(_elf(phdrs, tail=bytes(4096)))
    ram = memoryview(bytearray(8 << 20))
    with contextlib.suppress(UserError):
        place_image(load_image(path), ram, len(ram), 2)


@given(st.binary(min_size=0, max_size=4097))
def test_scanners_find_exactly_the_patterns(page: bytes) -> None:
    sites = {off for off, _ in site_offsets(page)}
    for i in range(min(len(page) - 1, 4096)):
        if page[i] == 0x0F and page[i + 1] in (0x30, 0x32):
            assert i in sites
    assert all(page[i : i + 2] == b"\xf3\x90" for i in pause_offsets(page))
    expected = [(i, page[i + 2] == 0x22, (page[i + 3] & 7) | (page[i] & 1) << 3)
                for i in range(min(len(page) - 3, 4096))
                if page[i] & 0xF4 == 0x44 and page[i + 1] == 0x0F and page[i + 2] in (0x20, 0x22)
                and page[i + 3] & 0xF8 == 0xC0]  # REX.R, MOV CR, ModRM 11 000 rrr (SDM vol. 2B "MOV CR")
    assert cr8_offsets(page) == expected


@given(st.lists(st.sampled_from([b"\x44", b"\x4c", b"\x47", b"\x0f", b"\x20", b"\x22", b"\xc0", b"\xc7", b"\xc8",
                                 b"\x40", b"\x90"]), max_size=600))
def test_cr8_scanner_on_dense_candidates(parts: list[bytes]) -> None:
    test_scanners_find_exactly_the_patterns.hypothesis.inner_test(b"".join(parts))  # type: ignore[attr-defined]
