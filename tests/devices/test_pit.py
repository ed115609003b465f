"""8254 PIT from the Intel 8254 data sheet: modes 0-5 (OUT and count), latch and read-back, access modes, BCD,
gate 2 through port 0x61, IRQ 0 edges from channel 0 (engine-free)."""

from __future__ import annotations

import pytest
from device_harness import Clock

from viridian.devices.pit import PIT_HZ, Pit

HZ = PIT_HZ * 10  # 10 TSC ticks per PIT clock: exact arithmetic in the tests


class Irqs:
    def __init__(self) -> None:
        self.events: list[tuple[int, bool]] = []

    def set_irq(self, irq: int, level: bool) -> None:
        self.events.append((irq, level))


def make() -> tuple[Pit, Clock, Irqs]:
    c, irqs = Clock(), Irqs()
    return Pit(c, HZ, irqs), c, irqs


def program(pit: Pit, ch: int, mode: int, count: int, bcd: bool = False) -> None:
    pit.write(0x43, 1, ch << 6 | 3 << 4 | mode << 1 | int(bcd))
    pit.write(0x40 + ch, 1, count & 0xFF)
    pit.write(0x40 + ch, 1, count >> 8)


def latched(pit: Pit, ch: int) -> int:
    pit.write(0x43, 1, ch << 6)
    lo = pit.read(0x40 + ch, 1)
    return pit.read(0x40 + ch, 1) << 8 | lo


def out2(pit: Pit) -> int:
    return pit.read(0x61, 1) >> 5 & 1


# (mode, count, [(pit clocks since load, expected OUT2)]) -- data sheet figures "Mode 0" ... "Mode 5"
OUT_TABLE = [
    (0, 5, [(0, 0), (4, 0), (5, 1), (9, 1)]),  # low until terminal count, then stays high
    (2, 4, [(0, 1), (2, 1), (3, 0), (4, 1), (7, 0), (8, 1)]),  # one-clock low pulse at count 1
    (3, 4, [(0, 1), (1, 1), (2, 0), (3, 0), (4, 1)]),  # square wave, even count: 2 high, 2 low
    (3, 5, [(0, 1), (2, 1), (3, 0), (4, 0), (5, 1)]),  # odd count: (N+1)/2 high, (N-1)/2 low
    (4, 3, [(0, 1), (2, 1), (3, 0), (4, 1)]),  # software strobe: low for one clock at count 0
]


@pytest.mark.parametrize(("mode", "count", "points"), OUT_TABLE)
def test_out_per_mode(mode: int, count: int, points: list[tuple[int, int]]) -> None:
    pit, c, _ = make()
    pit.write(0x61, 1, 1)  # gate 2 high
    program(pit, 2, mode, count)
    for clocks, out in points:
        c.t = clocks * 10
        assert out2(pit) == out, (mode, clocks)


# (mode, count, [(clocks, expected counter)])
COUNT_TABLE = [
    (0, 100, [(0, 100), (1, 99), (100, 0), (101, 0xFFFF)]),  # mode 0 wraps and keeps counting
    (2, 10, [(0, 10), (3, 7), (9, 1), (10, 10), (13, 7)]),
    (3, 10, [(0, 10), (1, 8), (4, 2), (5, 10), (6, 8)]),  # decrements by two, reloads each half
    (3, 5, [(0, 5), (1, 4), (2, 2), (3, 5), (4, 2)]),  # odd: N-1 first, then by two; N-3 in the low half
    (4, 3, [(0, 3), (3, 0), (4, 0xFFFF)]),
]


@pytest.mark.parametrize(("mode", "count", "points"), COUNT_TABLE)
def test_counter_values(mode: int, count: int, points: list[tuple[int, int]]) -> None:
    pit, c, _ = make()
    pit.write(0x61, 1, 1)
    program(pit, 2, mode, count)
    for clocks, value in points:
        c.t = clocks * 10
        assert latched(pit, 2) == value, (mode, clocks)


def test_latch_holds_until_read_and_second_latch_is_ignored() -> None:
    pit, c, _ = make()
    pit.write(0x61, 1, 1)
    program(pit, 2, 0, 1000)
    c.t = 100 * 10
    pit.write(0x43, 1, 0x80)
    c.t = 200 * 10
    pit.write(0x43, 1, 0x80)  # ignored: the first latch was not read
    lo, hi = pit.read(0x42, 1), pit.read(0x42, 1)
    assert hi << 8 | lo == 900
    assert latched(pit, 2) == 800


def test_read_back_status_then_count() -> None:
    pit, c, _ = make()
    pit.write(0x61, 1, 1)
    program(pit, 2, 0, 10)
    c.t = 20 * 10
    pit.write(0x43, 1, 0xC8)  # read-back: count and status of channel 2
    assert pit.read(0x42, 1) == 0x80 | 3 << 4 | 0 << 1  # OUT high, null count 0, LSB/MSB, mode 0, binary
    assert pit.read(0x42, 1) == (10 - 20) & 0xFF
    pit.write(0x43, 1, 0xB0)  # a control word sets null count until the count is written
    pit.write(0x43, 1, 0xE8)
    assert pit.read(0x42, 1) & 0x40


@pytest.mark.parametrize(("access", "writes", "reads"), [(1, [0x34], [0x34, 0x34]), (2, [0x12], [0x12, 0x12]),
                                                         (3, [0x34, 0x12], [0x34, 0x12])])
def test_access_modes(access: int, writes: list[int], reads: list[int]) -> None:
    """LSB only, MSB only (count = MSB << 8), LSB then MSB: the same byte order for writes and reads."""
    pit, _c, _ = make()
    pit.write(0x43, 1, 2 << 6 | access << 4)  # gate 2 low: the count holds still
    for b in writes:
        pit.write(0x42, 1, b)
    assert [pit.read(0x42, 1) for _ in reads] == reads


def test_bcd_counts_in_decimal() -> None:
    pit, c, _ = make()
    pit.write(0x61, 1, 1)
    program(pit, 2, 0, 0x1000, bcd=True)  # 1000 decimal
    c.t = 1 * 10
    assert latched(pit, 2) == 0x0999


def test_gate_low_stops_mode0_counting() -> None:
    pit, c, _ = make()
    program(pit, 2, 0, 100)  # gate 2 low at hand-off
    c.t = 50 * 10
    assert latched(pit, 2) == 100
    pit.write(0x61, 1, 1)
    c.t = 60 * 10
    assert latched(pit, 2) == 90


def test_port_b_bits() -> None:
    pit, _, _ = make()
    pit.write(0x61, 1, 0x0F)
    a, b = pit.read(0x61, 1), pit.read(0x61, 1)
    assert a & 0x0F == 0x0F and (a ^ b) == 0x10 and not a & 0xC0  # refresh toggles, NMI status bits 0


def test_handoff_channel0_mode2_at_18_2_hz() -> None:
    pit, _c, _ = make()
    pit.bios_init()
    assert pit.next_deadline() == 65536 * 10


def test_irq0_rising_edges_follow_channel0() -> None:
    pit, c, irqs = make()
    program(pit, 0, 2, 100)
    irqs.events.clear()
    assert pit.next_deadline() == 100 * 10
    c.t = 99 * 10
    pit.advance(c.t)  # OUT low for the clock at count 1
    assert irqs.events == [(0, False)]
    c.t = 100 * 10
    pit.advance(c.t)
    assert irqs.events[-1] == (0, True)
    assert pit.next_deadline() == 200 * 10
    c.t = 1000 * 10 + 5  # many periods late: one edge (an undelivered request stays one request)
    irqs.events.clear()
    pit.advance(c.t)
    assert irqs.events.count((0, True)) == 1


def test_state_round_trip_and_validation() -> None:
    pit, c, _ = make()
    program(pit, 0, 3, 1234)
    c.t = 777
    state = pit.save_state()
    other, _, _ = make()
    other.load_state(state)
    assert other.save_state() == state
    bad = dict(state, speaker=7)
    with pytest.raises(ValueError):
        other.load_state(bad)
