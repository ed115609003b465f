"""Minimal ACPI tables for a Linux guest (engine-free): RSDP, XSDT and a MADT listing one local APIC per vCPU.

ACPI 6.5 §5.2.5.3 (RSDP), §5.2.6 (system description table header), §5.2.8 (XSDT), §5.2.12 (MADT) and
§5.2.12.2 (Processor Local APIC structure). No I/O APIC is listed (the machine has none), no legacy 8259
(MADT flags PCAT_COMPAT clear). Without a MADT Linux finds no APIC (with acpi=off it disables the local
APIC and never runs hyperv_init).
"""

from __future__ import annotations

import struct

from viridian.machine import layout as L

OEM_ID = b"VIRDN "
OEM_TABLE = b"VIRIDIAN"
CREATOR = b"VRDN"
MADT_LAPIC = 0
LAPIC_ENABLED = 1


def _checksum(data: bytes) -> int:
    return (-sum(data)) & 0xFF


def sdt(signature: bytes, revision: int, body: bytes) -> bytes:
    """A table with the §5.2.6 header (36 bytes) and a correct checksum."""
    length = 36 + len(body)
    head = struct.pack("<4sIBB6s8sI4sI", signature, length, revision, 0, OEM_ID, OEM_TABLE, 1, CREATOR, 1)
    table = bytearray(head + body)
    table[9] = _checksum(bytes(table))
    return bytes(table)


def madt(vcpus: int) -> bytes:
    """§5.2.12: local APIC address, flags (no PCAT_COMPAT), one Processor Local APIC entry per vCPU
    (UID = APIC ID = vCPU index, enabled)."""
    body = struct.pack("<II", L.APIC_BASE, 0)
    for i in range(vcpus):
        body += struct.pack("<BBBBI", MADT_LAPIC, 8, i, i, LAPIC_ENABLED)
    return sdt(b"APIC", 4, body)


def rsdp(xsdt_addr: int) -> bytes:
    """§5.2.5.3: revision 2 (XSDT), both checksums."""
    first = bytearray(struct.pack("<8sB6sBI", b"RSD PTR ", 0, OEM_ID, 2, 0))
    first[8] = _checksum(bytes(first))
    full = bytearray(bytes(first) + struct.pack("<IQB3x", 36, xsdt_addr, 0))
    full[32] = _checksum(bytes(full))
    return bytes(full)


def build_acpi(ram: memoryview, base: int, vcpus: int) -> int:
    """Write RSDP (at ``base``, 16-byte aligned), XSDT and MADT from ``base`` up; returns the RSDP address."""
    xsdt_addr = base + 0x40
    tables = [madt(vcpus)]
    addrs = []
    at = xsdt_addr + 36 + 8 * len(tables)
    at = (at + 15) & ~15
    for t in tables:
        addrs.append(at)
        ram[at : at + len(t)] = t
        at = (at + len(t) + 15) & ~15
    xsdt = sdt(b"XSDT", 1, b"".join(struct.pack("<Q", a) for a in addrs))
    ram[xsdt_addr : xsdt_addr + len(xsdt)] = xsdt
    ram[base : base + 36] = rsdp(xsdt_addr)
    return base
