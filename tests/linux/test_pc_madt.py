"""The MADT of --machine pc (ACPI 6.5 §5.2.12, the entries QEMU's pc MADT has): PCAT_COMPAT, one I/O APIC,
interrupt source overrides IRQ 0 -> GSI 2 and the SCI level/active-high, LAPIC NMI on LINT1 (engine-free)."""

from __future__ import annotations

import struct

import pytest

from viridian.machine.linux_acpi import madt


def entries(table: bytes) -> list[tuple[int, bytes]]:
    out, at = [], 44
    while at < len(table):
        kind, length = table[at], table[at + 1]
        out.append((kind, table[at : at + length]))
        at += length
    return out


@pytest.mark.parametrize("vcpus", [1, 4])
def test_pc_madt_entries(vcpus: int) -> None:
    t = madt(vcpus, pc=True)
    assert sum(t) & 0xFF == 0 and struct.unpack_from("<I", t, 4)[0] == len(t)
    assert struct.unpack_from("<II", t, 36) == (0xFEE0_0000, 1)  # PCAT_COMPAT
    e = entries(t)
    assert [k for k, _ in e] == [0] * vcpus + [1, 2, 2, 4]
    assert struct.unpack("<BBBBII", e[vcpus][1]) == (1, 12, 0, 0, 0xFEC0_0000, 0)
    assert struct.unpack("<BBBBIH", e[vcpus + 1][1]) == (2, 10, 0, 0, 2, 0)  # ISA bus, IRQ 0 -> GSI 2, conforming
    assert struct.unpack("<BBBBIH", e[vcpus + 2][1]) == (2, 10, 0, 9, 9, 0x000D)  # SCI: level, active high
    assert struct.unpack("<BBBHB", e[vcpus + 3][1]) == (4, 6, 0xFF, 0, 1)  # every processor, LINT1


def test_minimal_madt_has_no_legacy_entries() -> None:
    t = madt(2)
    assert struct.unpack_from("<I", t, 40)[0] == 0 and [k for k, _ in entries(t)] == [0, 0]
