"""ACPI tables of --machine pc (viridian.machine.pc_acpi via build_acpi(pc=True)), engine-free: every checksum,
the FADT with fixed hardware (ACPI 6.5 §5.2.9 offsets: not HW-reduced, SCI_INT 9, PM1a event/control blocks and
PM timer at QEMU's PIIX4 0xB000 block in both 32-bit and X_ forms, TMR_VAL_EXT per the device, RESET_REG 0xCF9 /
0x06, the 8042 flag), the FACS (§5.2.10: 64-byte aligned, 64 bytes) and the HPET table (IA-PC HPET §3.2.4)."""

from __future__ import annotations

import itertools
import struct

import pytest

from viridian.machine.acpi import build_acpi
from viridian.machine.linux_acpi import F_HW_REDUCED_ACPI
from viridian.machine.linux_boot import BIOS_AREA
from viridian.machine.pc_acpi import F_RESET_REG_SUP, F_TMR_VAL_EXT


def _table(ram: memoryview, addr: int) -> bytes:
    length, = struct.unpack_from("<I", ram, addr + 4)
    return bytes(ram[addr : addr + length])


def _tables(timer_ext: bool = False) -> tuple[memoryview, dict[bytes, tuple[int, bytes]]]:
    ram = memoryview(bytearray(0x100000))
    rsdp = build_acpi(ram, BIOS_AREA, 2, pc=True, timer_ext=timer_ext)
    xsdt_addr, = struct.unpack_from("<Q", ram, rsdp + 24)
    xsdt = _table(ram, xsdt_addr)
    found = {b"XSDT": (xsdt_addr, xsdt)}
    for i in range((len(xsdt) - 36) // 8):
        addr, = struct.unpack_from("<Q", xsdt, 36 + 8 * i)
        found[bytes(ram[addr : addr + 4])] = (addr, _table(ram, addr))
    fadt = found[b"FACP"][1]
    facs_addr, dsdt_addr = struct.unpack_from("<QQ", fadt, 132)
    found[b"DSDT"] = (dsdt_addr, _table(ram, dsdt_addr))
    found[b"FACS"] = (facs_addr, _table(ram, facs_addr))
    return ram, found


def test_tables_checksum_and_do_not_overlap() -> None:
    _, t = _tables()
    assert set(t) == {b"XSDT", b"FACP", b"APIC", b"HPET", b"DSDT", b"FACS"}
    spans = sorted((a, a + len(b)) for a, b in t.values())
    assert all(x[1] <= y[0] for x, y in itertools.pairwise(spans))
    for sig, (_, table) in t.items():
        if sig != b"FACS":  # the FACS has no checksum (§5.2.10)
            assert sum(table) & 0xFF == 0, sig


@pytest.mark.parametrize("offset, fmt, value", [
    (46, "<H", 9),  # SCI_INT
    (48, "<I", 0),  # SMI_CMD: always in ACPI mode
    (56, "<I", 0xB000), (64, "<I", 0xB004), (76, "<I", 0xB008),  # PM1a_EVT_BLK, PM1a_CNT_BLK, PM_TMR_BLK
    (80, "<I", 0),  # GPE0_BLK
    (88, "<BBBB", (4, 2, 0, 4)),  # PM1_EVT_LEN, PM1_CNT_LEN, PM2_CNT_LEN, PM_TMR_LEN
    (108, "<B", 0x32),  # CENTURY
    (116, "<BBBBQ", (1, 8, 0, 1, 0xCF9)), (128, "<B", 6),  # RESET_REG (I/O byte), RESET_VALUE
    (148, "<BBBBQ", (1, 32, 0, 0, 0xB000)), (172, "<BBBBQ", (1, 16, 0, 0, 0xB004)),
    (208, "<BBBBQ", (1, 32, 0, 0, 0xB008)),  # X_PM1a_EVT_BLK, X_PM1a_CNT_BLK, X_PM_TMR_BLK
    (244, "<24s", bytes(24)),  # no HW-reduced sleep registers
])
def test_fadt_fields(offset: int, fmt: str, value: object) -> None:
    _, t = _tables()
    got = struct.unpack_from(fmt, t[b"FACP"][1], offset)
    assert (got if len(got) > 1 else got[0]) == value


@pytest.mark.parametrize("ext", [False, True])
def test_fadt_flags(ext: bool) -> None:
    _, t = _tables(ext)
    f = t[b"FACP"][1]
    flags, = struct.unpack_from("<I", f, 112)
    assert not flags & F_HW_REDUCED_ACPI and flags & F_RESET_REG_SUP
    assert bool(flags & F_TMR_VAL_EXT) == ext
    boot_arch, = struct.unpack_from("<H", f, 109)
    assert boot_arch & 1 and boot_arch & 2  # legacy devices, 8042
    assert f[8] == 6 and len(f) == 276


def test_facs() -> None:
    _, t = _tables()
    addr, facs = t[b"FACS"]
    assert addr % 64 == 0 and len(facs) == 64 and facs[32] == 2  # version 2
    assert struct.unpack_from("<I", facs, 16)[0] == 0  # global lock free


def test_hpet_table() -> None:
    _, t = _tables()
    h = t[b"HPET"][1]
    assert len(h) == 56 and h[8] == 1
    assert struct.unpack_from("<I", h, 36)[0] == 0x8086A201
    assert h[40] == 0 and struct.unpack_from("<Q", h, 44)[0] == 0xFED00000  # system memory at the HPET
