"""Multiboot modules and the command line as QEMU's -kernel/-initrd/-append give them (hw/i386/multiboot.c;
Multiboot Specification 0.6.96 §3.3), engine-free."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from viridian.errors import UserError
from viridian.machine import layout as L
from viridian.machine.loader import parse_initrd, read_modules
from viridian.machine.multiboot import MBI_ADDR, Module, install

RAM = 16 << 20


def cstr(ram: bytearray, addr: int) -> bytes:
    return bytes(ram[addr : ram.index(0, addr)])


def test_cmdline_is_image_then_args_and_modules_follow_the_kernel() -> None:
    ram = bytearray(RAM)
    mods = [Module("env.txt", b"A=1\nB=2\n"), Module("b.bin x y", b"\xAA" * 5000)]
    ebx = install(memoryview(ram), RAM, "build/k.elf", 0x123456, "--foo bar", mods, RAM - 0x10000)
    assert ebx == MBI_ADDR
    flags, _lo, _hi, _dev, cmdline, count, mods_addr = struct.unpack_from("<7I", ram, ebx)
    assert flags & 1 << 2 and flags & 1 << 3
    assert cstr(ram, cmdline) == b"build/k.elf --foo bar" and cmdline == L.CMDLINE
    assert count == 2
    entries = [struct.unpack_from("<4I", ram, mods_addr + 16 * i) for i in range(count)]
    (s0, e0, n0, r0), (s1, e1, n1, r1) = entries
    assert s0 == 0x124000 and e0 == s0 + 8 and r0 == 0  # page-aligned above the kernel's end
    assert s1 == 0x125000 and e1 == s1 + 5000 and r1 == 0
    assert bytes(ram[s0:e0]) == b"A=1\nB=2\n" and bytes(ram[s1:e1]) == b"\xAA" * 5000
    assert cstr(ram, n0) == b"env.txt" and cstr(ram, n1) == b"b.bin x y"


def test_no_modules_still_sets_the_mods_flag_with_count_zero() -> None:
    ram = bytearray(RAM)
    install(memoryview(ram), RAM, "k", 0x200000, "", [], RAM)
    flags, *_rest, cmdline, count = struct.unpack_from("<6I", ram, MBI_ADDR)
    assert flags & 1 << 3 and count == 0
    assert cstr(ram, cmdline) == b"k "  # QEMU: one space even when -append is empty


def test_module_that_does_not_fit_is_a_user_error() -> None:
    with pytest.raises(UserError, match="does not fit"):
        install(memoryview(bytearray(RAM)), RAM, "k", RAM - 0x3000, "", [Module("m", b"x" * 0x2001)], RAM - 0x1000)


@pytest.mark.parametrize(("spec", "items"), [
    ("env.txt", [("env.txt", "env.txt")]),
    ("a.bin arg1,b.bin", [("a.bin", "a.bin arg1"), ("b.bin", "b.bin")]),
    ("a.bin x,,y", [("a.bin", "a.bin x,y")]),  # ',,' is a literal comma
])
def test_initrd_syntax_is_qemus(spec: str, items: list[tuple[str, str]]) -> None:
    assert parse_initrd(spec) == items


def test_read_modules(tmp_path: Path) -> None:
    f = tmp_path / "env"
    f.write_bytes(b"K=V\n")
    assert read_modules(f"{f} extra") == (Module(f"{f} extra", b"K=V\n"),)
    with pytest.raises(UserError, match="cannot read multiboot module"):
        read_modules(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="empty module path"):
        read_modules(f"{f},")
