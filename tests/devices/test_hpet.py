"""HPET (viridian.devices.hpet) from the IA-PC HPET specification 1.0a §2.3 (QEMU pc values where it leaves
room): capabilities, the main counter (runs only while enabled, writable while halted), comparators in one-shot
and periodic mode (VAL_SET, 32-bit mode and its wrap interrupt), level/edge interrupts, GINTR_STA write-1-to-clear,
legacy replacement routing to IRQ0/IRQ8 with the gates it puts in front of the PIT and RTC, I/O APIC routes,
deadlines on virtual time, the ACPI table, snapshots."""

from __future__ import annotations

import struct

import pytest
from device_harness import Clock

from viridian.devices.hpet import (
    ENABLE_CNF,
    GCAP_ID,
    INT_ENB_CNF,
    INT_TYPE_CNF,
    LEG_RT_CNF,
    MODE32_CNF,
    TYPE_CNF,
    VAL_SET_CNF,
    Hpet,
    hpet_acpi_table_body,
)

HZ = 2_000_000_000
TICK = HZ // 100_000_000  # TSC ticks per HPET tick (20)
CONF, ISR, COUNTER = 0x10, 0x20, 0xF0


def tconf(n: int) -> int:
    return 0x100 + 0x20 * n


def tcmp(n: int) -> int:
    return 0x108 + 0x20 * n


class Lines:
    def __init__(self) -> None:
        self.log: list[tuple[str, int, bool]] = []

    def set_irq(self, irq: int, level: bool) -> None:
        self.log.append(("isa", irq, level))

    def gsi(self, pin: int, level: bool) -> None:
        self.log.append(("gsi", pin, level))


def make() -> tuple[Hpet, Clock, Lines]:
    clock, lines = Clock(), Lines()
    return Hpet(clock, HZ, irq=lines, gsi=lines.gsi), clock, lines


def at(h: Hpet, clock: Clock, t: int) -> None:
    clock.t = t
    h.advance(t)


@pytest.mark.parametrize("offset, size, value", [
    (0x000, 4, 0x8086A201), (0x004, 4, 10_000_000), (0x000, 8, GCAP_ID),
    (tconf(0), 4, 0x30), (tconf(2) + 4, 4, 0x4), (tcmp(1), 8, (1 << 64) - 1), (CONF, 4, 0), (0x0F8, 4, 0),
])
def test_reset_registers(offset: int, size: int, value: int) -> None:
    h, _, _ = make()
    assert h.mmio_read(offset, size) == value


def test_counter_runs_only_while_enabled_and_is_writable_while_halted() -> None:
    h, clock, _ = make()
    clock.t = 1000 * TICK
    assert h.mmio_read(COUNTER, 8) == 0
    h.mmio_write(COUNTER, 4, 0x1234)
    h.mmio_write(COUNTER + 4, 4, 0x1)
    assert h.mmio_read(COUNTER, 8) == 0x1_0000_1234
    h.mmio_write(CONF, 4, ENABLE_CNF)
    clock.t += 500 * TICK + TICK - 1
    assert h.mmio_read(COUNTER, 8) == 0x1_0000_1234 + 500
    h.mmio_write(COUNTER, 4, 0)  # dropped while running
    assert h.mmio_read(COUNTER, 4) == 0x1234 + 500
    h.mmio_write(CONF, 4, 0)
    clock.t += 10_000 * TICK
    assert h.mmio_read(COUNTER, 8) == 0x1_0000_1234 + 500  # frozen while halted


def test_one_shot_edge_on_its_route_at_the_exact_tick() -> None:
    h, clock, lines = make()
    h.mmio_write(tconf(2), 4, INT_ENB_CNF | 2 << 9)  # I/O APIC pin 2 (the only route QEMU pc offers)
    h.mmio_write(tcmp(2), 8, 1000)
    assert h.next_deadline() is None  # halted
    h.mmio_write(CONF, 4, ENABLE_CNF)
    assert h.next_deadline() == 1000 * TICK
    at(h, clock, 1000 * TICK - 1)
    assert lines.log == []
    at(h, clock, 1000 * TICK)
    assert lines.log == [("gsi", 2, True), ("gsi", 2, False)]
    assert h.mmio_read(ISR, 4) == 0  # edge mode leaves the status clear
    at(h, clock, 10 ** 6 * TICK)
    assert len(lines.log) == 2  # 64-bit one-shot: no second match


def test_route_outside_the_capability_is_not_taken() -> None:
    h, _, _ = make()
    h.mmio_write(tconf(0), 4, 5 << 9)
    assert (h.mmio_read(tconf(0), 4) >> 9) & 0x1F == 0


def test_level_mode_sets_status_holds_line_until_write_one() -> None:
    h, clock, lines = make()
    h.mmio_write(tconf(2), 4, INT_TYPE_CNF | 2 << 9)  # interrupts disabled: status still set (§2.3.6)
    h.mmio_write(tcmp(2), 4, 100)  # the upper half stays all-ones (reset value): no match at 100
    h.mmio_write(CONF, 4, ENABLE_CNF)
    at(h, clock, 100 * TICK)
    assert h.mmio_read(ISR, 4) == 0
    h.mmio_write(tcmp(2), 8, 200)
    at(h, clock, 200 * TICK)
    assert h.mmio_read(ISR, 4) == 0b100 and lines.log == []
    h.mmio_write(tconf(2), 4, INT_TYPE_CNF | INT_ENB_CNF | 2 << 9)
    assert lines.log == [("gsi", 2, True)]
    h.mmio_write(ISR, 4, 0b011)  # other bits: no effect
    assert h.mmio_read(ISR, 4) == 0b100
    h.mmio_write(ISR, 4, 0b100)
    assert h.mmio_read(ISR, 4) == 0 and lines.log[-1] == ("gsi", 2, False)


def test_periodic_with_val_set_and_32_bit_mode() -> None:
    """Linux's legacy periodic setup: CONF = enable|periodic|VAL_SET|32-bit, comparator = now + period, then the
    period; every period one edge on IRQ 0 (legacy replacement)."""
    h, clock, lines = make()
    h.mmio_write(CONF, 4, LEG_RT_CNF)
    h.mmio_write(tconf(0), 4, INT_ENB_CNF | TYPE_CNF | VAL_SET_CNF | MODE32_CNF)
    h.mmio_write(tcmp(0), 4, 1000)  # comparator and period
    assert not h.mmio_read(tconf(0), 4) & VAL_SET_CNF
    h.mmio_write(tcmp(0), 4, 250)  # period only
    assert h.mmio_read(tcmp(0), 8) == 1000
    h.mmio_write(CONF, 4, LEG_RT_CNF | ENABLE_CNF)
    edges = []
    for _ in range(4):
        d = h.next_deadline()
        assert d is not None
        at(h, clock, d)
        edges.append(d // TICK)
    assert edges == [1000, 1250, 1500, 1750]
    assert lines.log == [("isa", 0, True), ("isa", 0, False)] * 4
    assert h.mmio_read(tcmp(0), 4) == 2000


def test_periodic_catch_up_after_a_long_gap_is_one_edge() -> None:
    h, clock, lines = make()
    h.mmio_write(tconf(2), 4, INT_ENB_CNF | TYPE_CNF | VAL_SET_CNF | 2 << 9)
    h.mmio_write(tcmp(2), 8, 100)
    h.mmio_write(CONF, 4, ENABLE_CNF)
    at(h, clock, 1050 * TICK)  # matches at 100..1000: ten periods
    assert lines.log == [("gsi", 2, True), ("gsi", 2, False)]
    assert h.mmio_read(tcmp(2), 8) == 1100


def test_32_bit_one_shot_also_fires_at_the_wrap() -> None:
    h, clock, lines = make()
    h.mmio_write(COUNTER, 8, 0xFFFF_FF00)
    h.mmio_write(tconf(2), 4, INT_ENB_CNF | MODE32_CNF | 2 << 9)
    h.mmio_write(tcmp(2), 4, 0x80)
    h.mmio_write(CONF, 4, ENABLE_CNF)
    assert h.next_deadline() == 0x100 * TICK  # the low 32 bits wrap first
    at(h, clock, 0x100 * TICK)
    assert h.next_deadline() == 0x180 * TICK
    at(h, clock, 0x180 * TICK)
    assert lines.log == [("gsi", 2, True), ("gsi", 2, False)] * 2


def test_legacy_replacement_moves_timer1_to_irq8_and_gates_rtc_and_pit() -> None:
    h, clock, lines = make()
    rtc = h.gate(lines)
    rtc.set_irq(8, True)
    assert lines.log == [("isa", 8, True)]
    h.mmio_write(CONF, 4, LEG_RT_CNF)
    assert lines.log[-1] == ("isa", 8, False)  # the RTC's raised line is dropped
    rtc.set_irq(8, False)
    rtc.set_irq(8, True)
    assert len(lines.log) == 2  # silenced while legacy replacement is on
    h.mmio_write(tconf(1), 4, INT_ENB_CNF | INT_TYPE_CNF)
    h.mmio_write(tcmp(1), 8, 10)
    h.mmio_write(CONF, 4, LEG_RT_CNF | ENABLE_CNF)
    at(h, clock, 10 * TICK)
    assert lines.log[-1] == ("isa", 8, True)  # HPET timer 1, level
    h.mmio_write(CONF, 4, ENABLE_CNF)  # legacy off: timer 1 back on its route (pin 0), the RTC's line back
    assert lines.log[-3:] == [("isa", 8, False), ("isa", 8, True), ("gsi", 0, True)]


def test_acpi_table_body() -> None:
    body = hpet_acpi_table_body()
    assert len(body) == 56 - 36
    block_id, space, _width, _off, _access, addr, number, tick, prot = struct.unpack("<IBBBBQBHB", body)
    assert block_id == 0x8086A201 and space == 0 and addr == 0xFED00000
    assert (number, tick, prot) == (0, 0, 0)


def test_state_round_trips_and_rejects_garbage() -> None:
    h, clock, lines = make()
    h.gate(lines).set_irq(8, True)  # a gated RTC with its line up
    h.mmio_write(tconf(0), 4, INT_ENB_CNF | TYPE_CNF | VAL_SET_CNF)
    h.mmio_write(tcmp(0), 8, 500)
    h.mmio_write(CONF, 4, ENABLE_CNF | LEG_RT_CNF)
    at(h, clock, 700 * TICK)
    other, oclock, olines = make()
    gate = other.gate(olines)
    other.load_state(h.save_state())
    assert other.save_state() == h.save_state() and gate.legacy and gate.levels == {8: True}
    other.mmio_write(CONF, 4, ENABLE_CNF)  # legacy off: the restored gate gives the RTC's line back
    assert olines.log[-1] == ("isa", 8, True)
    oclock.t = clock.t = 5000 * TICK
    assert other.mmio_read(COUNTER, 8) == h.mmio_read(COUNTER, 8)
    for bad in ({**h.save_state(), "conf": 4}, {**h.save_state(), "timers": []}, {**h.save_state(), "isr": "x"},
                {**h.save_state(), "gates": []}, {**h.save_state(), "gates": [[[99, True]]]}):
        with pytest.raises(ValueError):
            other.load_state(bad)
