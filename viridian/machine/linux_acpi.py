"""ACPI tables for a Linux guest (engine-free): RSDP, XSDT, a HW-reduced FADT, a DSDT and a MADT listing one
local APIC per vCPU.

The platform is HW-reduced ACPI (ACPI 6.5 §4.1): this machine has no ACPI fixed hardware (no PM1 event/control
blocks, no PM timer, no GPE blocks, no SCI, no SMI command port), so the FADT sets HW_REDUCED_ACPI and OSPM
never has to "enable ACPI" through SMI_CMD. The only hardware it points at is the Sleep Control/Status register
pair (viridian.devices.acpi_sleep, attached by viridian.machine.linux_machine), which with the DSDT's \\_S5_
object gives the guest an ACPI power-off. No I/O APIC is listed (the machine has none), no legacy 8259 (MADT
flags PCAT_COMPAT clear), no FACS (optional when HW-reduced, §5.2.10). Without a MADT Linux finds no APIC (with
acpi=off it disables the local APIC and never runs hyperv_init).
"""

from __future__ import annotations

import struct

from viridian.devices.acpi_sleep import CONTROL_PORT, S5_SLP_TYP, STATUS_PORT
from viridian.devices.cmos import CENTURY
from viridian.machine import layout as L

OEM_ID = b"VIRDN "
OEM_TABLE = b"VIRIDIAN"
CREATOR = b"VRDN"
MADT_LAPIC = 0
LAPIC_ENABLED = 1

FADT_REVISION, FADT_MINOR = 6, 5  # ACPI 6.5
FADT_LENGTH = 276  # through Hypervisor Vendor Identity (offset 268, 8 bytes)
DSDT_REVISION = 2  # compliance revision >= 2: 64-bit AML integers (§5.2.11.1)
GAS_SYSTEM_IO, GAS_ACCESS_BYTE = 1, 1

# §5.2.9 Table 5.10 "Fixed ACPI Description Table Fixed Feature Flags"
F_WBINVD = 1 << 0  # WBINVD flushes caches (the emulated CPU has none to lose)
F_PROC_C1 = 1 << 2  # C1 (HLT) works on every processor
F_PWR_BUTTON = 1 << 4  # no fixed-feature power button
F_SLP_BUTTON = 1 << 5  # no fixed-feature sleep button
F_FIX_RTC = 1 << 6  # RTC wake status is not in fixed register space
F_HEADLESS = 1 << 12  # no monitor or keyboard/mouse to detect
F_HW_REDUCED_ACPI = 1 << 20
FADT_FLAGS = F_WBINVD | F_PROC_C1 | F_PWR_BUTTON | F_SLP_BUTTON | F_FIX_RTC | F_HEADLESS | F_HW_REDUCED_ACPI

# §5.2.9.3 Table 5.11 "IA-PC Boot Architecture Flags"
BOOT_LEGACY_DEVICES = 1 << 0  # COM1 and the CMOS/RTC sit at their ISA ports
BOOT_8042 = 1 << 1  # clear: no keyboard controller
BOOT_VGA_NOT_PRESENT = 1 << 2
BOOT_MSI_NOT_SUPPORTED = 1 << 3  # no PCI, no I/O APIC: nothing could deliver an MSI
BOOT_CMOS_RTC_NOT_PRESENT = 1 << 5  # clear: viridian.devices.cmos is there
IAPC_BOOT_ARCH = BOOT_LEGACY_DEVICES | BOOT_VGA_NOT_PRESENT | BOOT_MSI_NOT_SUPPORTED
NO_C2_LATENCY, NO_C3_LATENCY = 101, 1001  # §5.2.9: > 100 / > 1000 µs means the state is not supported


def _checksum(data: bytes) -> int:
    return (-sum(data)) & 0xFF


def sdt(signature: bytes, revision: int, body: bytes) -> bytes:
    """A table with the §5.2.6 header (36 bytes) and a correct checksum."""
    length = 36 + len(body)
    head = struct.pack("<4sIBB6s8sI4sI", signature, length, revision, 0, OEM_ID, OEM_TABLE, 1, CREATOR, 1)
    table = bytearray(head + body)
    table[9] = _checksum(bytes(table))
    return bytes(table)


def gas(port: int) -> bytes:
    """§5.2.3.2 Generic Address Structure: one byte in system I/O space at ``port`` (0 = not present)."""
    if port == 0:
        return bytes(12)
    return struct.pack("<BBBBQ", GAS_SYSTEM_IO, 8, 0, GAS_ACCESS_BYTE, port)


def fadt(dsdt_addr: int) -> bytes:
    """§5.2.9 (Table 5.9): revision 6, HW_REDUCED_ACPI; X_DSDT (DSDT and FIRMWARE_CTRL 0: no FACS); SCI_INT,
    SMI_CMD and every PM1/PM2/PM timer/GPE block 0; CENTURY = the CMOS century index; SLEEP_CONTROL_REG /
    SLEEP_STATUS_REG in I/O space."""
    t = bytearray(FADT_LENGTH)
    struct.pack_into("<HH", t, 96, NO_C2_LATENCY, NO_C3_LATENCY)  # P_LVL2_LAT, P_LVL3_LAT
    t[108] = CENTURY
    struct.pack_into("<H", t, 109, IAPC_BOOT_ARCH)
    struct.pack_into("<I", t, 112, FADT_FLAGS)
    t[131] = FADT_MINOR
    struct.pack_into("<Q", t, 140, dsdt_addr)  # X_DSDT
    t[244:256] = gas(CONTROL_PORT)  # SLEEP_CONTROL_REG
    t[256:268] = gas(STATUS_PORT)  # SLEEP_STATUS_REG
    return sdt(b"FACP", FADT_REVISION, bytes(t[36:]))


# -- AML (§20.2): the few encodings the DSDT needs --------------------------------------------------------
NAME_OP, PACKAGE_OP, BYTE_PREFIX, ZERO_OP, ONE_OP = 0x08, 0x12, 0x0A, 0x00, 0x01


def aml_pkg_length(n: int) -> bytes:
    """§20.2.4 PkgLength for a body of ``n`` bytes (the count includes the PkgLength bytes themselves)."""
    for extra in range(4):
        total = n + 1 + extra
        if extra == 0 and total < 0x40:
            return bytes([total])
        if extra and total < 1 << (4 + 8 * extra):
            out = [extra << 6 | (total & 0xF)]
            out += [(total >> (4 + 8 * i)) & 0xFF for i in range(extra)]
            return bytes(out)
    raise ValueError(f"AML package of {n} bytes is too long")


def aml_integer(v: int) -> bytes:
    """§20.2.3 ComputationalData: ZeroOp, OneOp or BytePrefix (the values the DSDT uses fit a byte)."""
    if not 0 <= v <= 0xFF:
        raise ValueError(f"AML byte constant {v:#x} out of range")
    return bytes([ZERO_OP]) if v == 0 else bytes([ONE_OP]) if v == 1 else bytes([BYTE_PREFIX, v])


def aml_package(*values: int) -> bytes:
    """§20.2.5.4 DefPackage: PackageOp PkgLength NumElements PackageElementList."""
    body = bytes([len(values)]) + b"".join(aml_integer(v) for v in values)
    return bytes([PACKAGE_OP]) + aml_pkg_length(len(body)) + body


def aml_name(seg: bytes, data: bytes) -> bytes:
    """§20.2.5.1 DefName: NameOp NameString DataRefObject (a 4-character NameSeg, §20.2.2)."""
    if len(seg) != 4:
        raise ValueError(f"AML NameSeg {seg!r} is not 4 characters")
    return bytes([NAME_OP]) + seg + data


def dsdt() -> bytes:
    """§5.2.11.1: a definition block holding only \\_S5_ (§7.4.2): Package {SLP_TYPa, SLP_TYPb, reserved,
    reserved}; HW-reduced OSPM writes SLP_TYPa to the Sleep Control register (there is no PM1b)."""
    return sdt(b"DSDT", DSDT_REVISION, aml_name(b"_S5_", aml_package(S5_SLP_TYP, 0, 0, 0)))


MADT_IOAPIC, MADT_ISO, MADT_LAPIC_NMI = 1, 2, 4
PCAT_COMPAT = 1  # §5.2.12 Table 5.20: dual 8259 PICs installed
ISO_LEVEL_HIGH = 0x000D  # §5.2.12.5 MPS INTI flags: active high (01), level triggered (11)
SCI_IRQ = 9


def madt(vcpus: int, pc: bool = False) -> bytes:
    """§5.2.12: local APIC address, flags, one Processor Local APIC entry per vCPU (UID = APIC ID = vCPU index,
    enabled). ``pc`` (--machine pc) adds what QEMU's pc MADT has (acpi-common.c build_madt): PCAT_COMPAT, the
    I/O APIC (ID 0, 0xFEC00000, GSI base 0, §5.2.12.3), interrupt source overrides IRQ 0 -> GSI 2 (flags 0:
    conforming, i.e. ISA edge/high) and IRQ 9 (the SCI) -> GSI 9 level/active-high (§5.2.12.5), and the local
    APIC NMI on LINT1 of every processor (UID 0xFF, §5.2.12.7)."""
    body = struct.pack("<II", L.APIC_BASE, PCAT_COMPAT if pc else 0)
    for i in range(vcpus):
        body += struct.pack("<BBBBI", MADT_LAPIC, 8, i, i, LAPIC_ENABLED)
    if pc:
        body += struct.pack("<BBBBII", MADT_IOAPIC, 12, 0, 0, 0xFEC0_0000, 0)
        body += struct.pack("<BBBBIH", MADT_ISO, 10, 0, 0, 2, 0)
        body += struct.pack("<BBBBIH", MADT_ISO, 10, 0, SCI_IRQ, SCI_IRQ, ISO_LEVEL_HIGH)
        body += struct.pack("<BBBHB", MADT_LAPIC_NMI, 6, 0xFF, 0, 1)
    return sdt(b"APIC", 4, body)


def rsdp(xsdt_addr: int) -> bytes:
    """§5.2.5.3: revision 2 (XSDT), both checksums."""
    first = bytearray(struct.pack("<8sB6sBI", b"RSD PTR ", 0, OEM_ID, 2, 0))
    first[8] = _checksum(bytes(first))
    full = bytearray(bytes(first) + struct.pack("<IQB3x", 36, xsdt_addr, 0))
    full[32] = _checksum(bytes(full))
    return bytes(full)


def align(at: int) -> int:
    return (at + 15) & ~15
