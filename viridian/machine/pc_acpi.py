"""ACPI tables of the full PC (``--machine pc``), engine-free: a FADT with ACPI fixed hardware (not HW-reduced),
its FACS, and the "HPET" table. The DSDT, MADT, XSDT and RSDP are viridian.machine.linux_acpi's.

The fixed hardware is viridian.devices.pm_timer (the PIIX4 PM block at 0xB000, as QEMU pc with SeaBIOS): PM1a
event block 0xB000 (4 bytes), PM1a control block 0xB004 (2 bytes), PM timer 0xB008 (4 bytes, 24-bit unless
TMR_VAL_EXT), SCI on IRQ 9, no SMI_CMD (§5.2.9 SMI_CMD = 0: no mode transition, always in ACPI mode), no GPE blocks. The
DSDT's \\_S5_ SLP_TYPa goes to PM1a_CNT.SLP_TYP (§7.4.2). RESET_REG is the PIIX reset control register, I/O port
0xCF9, value 0x06 (hard reset + reset CPU; QEMU q35's register, the pc machine has none), so Linux's first
reboot attempt (reboot=acpi) works. The FADT stays revision 6 (ACPI 6.5), so Linux reads IAPC_BOOT_ARCH: the
8042 flag is set (the platform has an i8042), and the X_ block addresses are given beside the 32-bit ones.
"""

from __future__ import annotations

import struct
from typing import Final

from viridian.devices.cmos import CENTURY
from viridian.devices.hpet import HPET_BASE, hpet_acpi_table_body
from viridian.devices.pm_timer import (
    PM1_CNT,
    PM1_CNT_LEN,
    PM1_EVT_LEN,
    PM_BASE,
    PM_TMR,
    PM_TMR_LEN,
    SCI_IRQ,
)
from viridian.machine.linux_acpi import (
    BOOT_LEGACY_DEVICES,
    BOOT_MSI_NOT_SUPPORTED,
    BOOT_VGA_NOT_PRESENT,
    F_FIX_RTC,
    F_HEADLESS,
    F_PROC_C1,
    F_PWR_BUTTON,
    F_SLP_BUTTON,
    F_WBINVD,
    FADT_LENGTH,
    FADT_MINOR,
    FADT_REVISION,
    NO_C2_LATENCY,
    NO_C3_LATENCY,
    sdt,
)

GAS_SYSTEM_IO = 1
GAS_ACCESS_BYTE = 1
F_TMR_VAL_EXT = 1 << 8  # §5.2.9 Table 5.10: the PM timer has 32 bits
F_RESET_REG_SUP = 1 << 10
PC_FADT_FLAGS: Final = (F_WBINVD | F_PROC_C1 | F_PWR_BUTTON | F_SLP_BUTTON | F_FIX_RTC | F_HEADLESS
                        | F_RESET_REG_SUP)
BOOT_8042 = 1 << 1
PC_IAPC_BOOT_ARCH: Final = BOOT_LEGACY_DEVICES | BOOT_8042 | BOOT_VGA_NOT_PRESENT | BOOT_MSI_NOT_SUPPORTED
RESET_PORT: Final = 0xCF9
RESET_VALUE: Final = 0x06
FACS_LENGTH: Final = 64
FACS_VERSION: Final = 2


def io_gas(port: int, bits: int, access: int = 0) -> bytes:
    """§5.2.3.2 Generic Address Structure in system I/O space (access size 0 = by the register's width)."""
    return struct.pack("<BBBBQ", GAS_SYSTEM_IO, bits, 0, access, port)


def facs() -> bytes:
    """§5.2.10 Table 5.14: signature, length 64, hardware signature 0, no waking vectors, global lock 0,
    flags 0, version 2 (no checksum: the FACS has none)."""
    return struct.pack("<4sIIIII Q B3x I 24x".replace(" ", ""), b"FACS", FACS_LENGTH, 0, 0, 0, 0, 0,
                       FACS_VERSION, 0)


def pc_fadt(dsdt_addr: int, facs_addr: int, *, pm_base: int = PM_BASE, timer_ext: bool = False) -> bytes:
    """§5.2.9 Table 5.9, revision 6 with ACPI fixed hardware: X_FIRMWARE_CTRL, X_DSDT, SCI_INT 9, the PM1a
    event/control blocks and the PM timer (32-bit and X_ forms), CENTURY, IAPC_BOOT_ARCH, RESET_REG."""
    t = bytearray(FADT_LENGTH)
    struct.pack_into("<H", t, 46, SCI_IRQ)  # SCI_INT
    struct.pack_into("<I", t, 56, pm_base)  # PM1a_EVT_BLK
    struct.pack_into("<I", t, 64, pm_base + PM1_CNT)  # PM1a_CNT_BLK
    struct.pack_into("<I", t, 76, pm_base + PM_TMR)  # PM_TMR_BLK
    t[88], t[89], t[91] = PM1_EVT_LEN, PM1_CNT_LEN, PM_TMR_LEN
    struct.pack_into("<HH", t, 96, NO_C2_LATENCY, NO_C3_LATENCY)  # P_LVL2_LAT, P_LVL3_LAT
    t[108] = CENTURY
    struct.pack_into("<H", t, 109, PC_IAPC_BOOT_ARCH)
    struct.pack_into("<I", t, 112, PC_FADT_FLAGS | (F_TMR_VAL_EXT if timer_ext else 0))
    t[116:128] = io_gas(RESET_PORT, 8, GAS_ACCESS_BYTE)  # RESET_REG
    t[128] = RESET_VALUE
    t[131] = FADT_MINOR
    struct.pack_into("<QQ", t, 132, facs_addr, dsdt_addr)  # X_FIRMWARE_CTRL, X_DSDT
    t[148:160] = io_gas(pm_base, 8 * PM1_EVT_LEN)  # X_PM1a_EVT_BLK
    t[172:184] = io_gas(pm_base + PM1_CNT, 8 * PM1_CNT_LEN)  # X_PM1a_CNT_BLK
    t[208:220] = io_gas(pm_base + PM_TMR, 8 * PM_TMR_LEN)  # X_PM_TMR_BLK
    return sdt(b"FACP", FADT_REVISION, bytes(t[36:]))


def hpet_table(base: int = HPET_BASE) -> bytes:
    """IA-PC HPET specification §3.2.4 "ACPI table": revision 1, 56 bytes."""
    return sdt(b"HPET", 1, hpet_acpi_table_body(base))


__all__ = ["F_RESET_REG_SUP", "F_TMR_VAL_EXT", "PC_FADT_FLAGS", "RESET_PORT", "RESET_VALUE", "facs", "hpet_table",
           "io_gas", "pc_fadt"]
