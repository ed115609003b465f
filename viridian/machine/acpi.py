"""The ACPI tables a kernel finds at boot (ACPI 6.4 §5.2): the RSDP and XSDT over either the hardware-reduced
platform's FADT/DSDT/MADT (linux_acpi.py) or the full PC's FADT, FACS and HPET table (pc_acpi.py)."""

from __future__ import annotations

import struct

from viridian.machine import pc_acpi
from viridian.machine.linux_acpi import align, dsdt, fadt, madt, rsdp, sdt


def build_acpi(ram: memoryview, base: int, vcpus: int, *, pc: bool = False, timer_ext: bool = False) -> int:
    """Write RSDP (at ``base``, 16-byte aligned), XSDT (§5.2.8: FADT, MADT [, HPET]), the FADT, DSDT and MADT
    from ``base`` up; returns the RSDP address. ``pc``: the full PC's FADT with fixed hardware, its FACS and the
    HPET table (viridian.machine.pc_acpi; ``timer_ext``: a 32-bit PM timer)."""
    xsdt_addr = base + 0x40
    at = align(xsdt_addr + 36 + 8 * 3)
    dsdt_addr, dsdt_table = at, dsdt()
    fadt_addr = align(dsdt_addr + len(dsdt_table))
    extra: list[tuple[int, bytes]] = []
    if pc:
        facs_addr = (fadt_addr + 63) & ~63  # §5.2.10: 64-byte aligned
        extra.append((facs_addr, pc_acpi.facs()))
        fadt_addr = facs_addr + pc_acpi.FACS_LENGTH
        fadt_table = pc_acpi.pc_fadt(dsdt_addr, facs_addr, timer_ext=timer_ext)
    else:
        fadt_table = fadt(dsdt_addr)
    madt_addr = align(fadt_addr + len(fadt_table))
    madt_table = madt(vcpus, pc=pc)
    listed = [fadt_addr, madt_addr]
    if pc:
        hpet_addr = align(madt_addr + len(madt_table))
        extra.append((hpet_addr, pc_acpi.hpet_table()))
        listed.append(hpet_addr)
    for addr, table in ((dsdt_addr, dsdt_table), (fadt_addr, fadt_table), (madt_addr, madt_table), *extra):
        ram[addr : addr + len(table)] = table
    xsdt = sdt(b"XSDT", 1, struct.pack(f"<{len(listed)}Q", *listed))
    ram[xsdt_addr : xsdt_addr + len(xsdt)] = xsdt
    ram[base : base + 36] = rsdp(xsdt_addr)
    return base
