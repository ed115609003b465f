"""I/O APIC from the 82093AA data sheet: IOREGSEL/IOWIN, ID/VER/ARB, redirection entries, edge and level pins
(Remote IRR, EOI broadcast and the EOI register), masking; destinations through the platform (engine-free)."""

from __future__ import annotations

from typing import Any

import pytest

from viridian.clock import VirtualClock
from viridian.devices.apic_bus import ApicBus
from viridian.devices.ioapic import IoApic
from viridian.devices.pc_platform import PcPlatform

LEVEL, MASKED, LOGICAL, REMOTE_IRR = 1 << 15, 1 << 16, 1 << 11, 1 << 14


class Sent:
    def __init__(self) -> None:
        self.msgs: list[tuple[int, bool, int, int, bool]] = []

    def __call__(self, dest: int, logical: bool, mode: int, vector: int, level: bool) -> bool:
        self.msgs.append((dest, logical, mode, vector, level))
        return True


def reg(io: IoApic, index: int, value: int | None = None) -> int:
    io.mmio_write(0x00, 4, index)
    if value is not None:
        io.mmio_write(0x10, 4, value)
    return io.mmio_read(0x10, 4)


def route(io: IoApic, pin: int, low: int, dest: int = 0) -> None:
    reg(io, 0x11 + 2 * pin, dest << 24)
    reg(io, 0x10 + 2 * pin, low)


def test_identification_registers() -> None:
    io = IoApic()
    assert reg(io, 0x01) == 0x00170020
    reg(io, 0x00, 0x0F00_0000 | 0xFF)
    assert reg(io, 0x00) == 0x0F00_0000 and reg(io, 0x02) == 0x0F00_0000
    assert io.mmio_read(0x00, 4) == 0x02  # IOREGSEL reads back (the last index selected)
    assert all(reg(io, 0x10 + 2 * n) == MASKED for n in range(24))


def test_read_only_bits_and_high_dword() -> None:
    io = IoApic()
    reg(io, 0x10, 0xFFFF_FFFF)
    assert reg(io, 0x10) == 0xFFFF_FFFF & ~(1 << 12 | REMOTE_IRR)
    reg(io, 0x11, 0xAB00_0000)
    assert reg(io, 0x11) == 0xAB00_0000


@pytest.mark.parametrize(("low", "dest", "expect"), [
    (0x30, 1, (1, False, 0, 0x30, False)),  # fixed, physical
    (0x31 | LOGICAL | 1 << 8, 0x03, (0x03, True, 1, 0x31, False)),  # lowest priority, logical
    (0x32 | LEVEL, 0, (0, False, 0, 0x32, True)),
])
def test_delivery_message(low: int, dest: int, expect: tuple[int, bool, int, int, bool]) -> None:
    sent = Sent()
    io = IoApic(sent)
    route(io, 5, low, dest)
    io.set_irq(5, True)
    assert sent.msgs == [expect]


def test_edge_needs_a_rising_edge_and_masked_edges_are_lost() -> None:
    sent = Sent()
    io = IoApic(sent)
    route(io, 2, 0x30 | MASKED)
    io.set_irq(2, True)
    io.set_irq(2, False)
    route(io, 2, 0x30)
    assert sent.msgs == []  # lost while masked
    io.set_irq(2, True)
    io.set_irq(2, True)  # no new edge
    assert len(sent.msgs) == 1


def test_level_remote_irr_and_eoi() -> None:
    sent = Sent()
    io = IoApic(sent)
    route(io, 9, 0x41 | LEVEL)
    io.set_irq(9, True)
    assert len(sent.msgs) == 1 and reg(io, 0x10 + 18) & REMOTE_IRR
    io.eoi(0x41)  # line still high: delivered again
    assert len(sent.msgs) == 2 and reg(io, 0x10 + 18) & REMOTE_IRR
    io.set_irq(9, False)
    io.eoi(0x41)
    assert len(sent.msgs) == 2 and not reg(io, 0x10 + 18) & REMOTE_IRR


def test_eoi_register_and_edge_rewrite_clear_remote_irr() -> None:
    sent = Sent()
    io = IoApic(sent)
    route(io, 3, 0x50 | LEVEL)
    io.set_irq(3, True)
    io.set_irq(3, False)
    io.mmio_write(0x40, 4, 0x50)  # the EOI register (version 0x20)
    assert not reg(io, 0x16) & REMOTE_IRR
    io.set_irq(3, True)
    route(io, 3, 0x50)  # rewritten as edge: Remote IRR clears
    assert not reg(io, 0x16) & REMOTE_IRR


def test_masked_level_pin_delivers_when_unmasked() -> None:
    sent = Sent()
    io = IoApic(sent)
    route(io, 1, 0x60 | LEVEL | MASKED)
    io.set_irq(1, True)
    assert sent.msgs == []
    route(io, 1, 0x60 | LEVEL)
    assert len(sent.msgs) == 1


class Ports:
    def attach(self, ports: Any, device: Any) -> None:
        pass


def platform(vcpus: int = 2) -> PcPlatform:
    clock = VirtualClock()
    bus = ApicBus.create(vcpus, clock)
    p = PcPlatform(clock, bus, Ports())
    for a in bus:
        a.write_register(0xF0, 0x1FF)
        a.on_eoi_broadcast = p.eoi_broadcast
    return p


def test_platform_routes_isa_irq0_to_pin2_and_level_eoi_comes_back() -> None:
    p = platform()
    route(p.ioapic, 2, 0x30, dest=1)
    p.set_irq(0, True)
    assert p.bus[1].irr_vectors() == [0x30] and p.bus[0].irr_vectors() == []
    route(p.ioapic, 9, 0x41 | LEVEL, dest=0)
    p.set_irq(9, True)
    apic = p.bus[0]
    assert apic.pending_vector() == 0x41 and apic.is_level(0x41)
    apic.acknowledge()
    p.set_irq(9, False)
    apic.eoi()  # broadcast: Remote IRR clears
    assert not reg(p.ioapic, 0x10 + 18) & REMOTE_IRR


def test_platform_logical_and_lowest_priority() -> None:
    p = platform(3)
    for i, a in enumerate(p.bus):
        a.write_register(0xE0, 0xFFFF_FFFF)  # flat model
        a.write_register(0xD0, (1 << i) << 24)
    route(p.ioapic, 4, 0x44 | LOGICAL, dest=0b110)
    p.set_irq(4, True)
    assert [a.irr_vectors() for a in p.bus] == [[], [0x44], [0x44]]
    route(p.ioapic, 5, 0x45 | LOGICAL | 1 << 8, dest=0b110)
    p.set_irq(5, True)
    assert [0x45 in a.irr_vectors() for a in p.bus] == [False, True, False]


def test_state_round_trip() -> None:
    io = IoApic()
    route(io, 7, 0x77 | LEVEL)
    io.set_irq(7, True)
    other = IoApic()
    other.load_state(io.save_state())
    assert other.save_state() == io.save_state()
    with pytest.raises(ValueError):
        other.load_state(dict(io.save_state(), entries=[0] * 23))
