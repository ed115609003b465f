"""RTC interrupts of viridian.devices.cmos from the MC146818A data sheet ("Periodic interrupt", "Alarm",
"Update-ended", "Register B", "Register C"): flags set from virtual time whether or not enabled, IRQF and IRQ 8
from the enabled ones, status C read-to-clear, SET inhibiting updates and clearing UIE, the rate table, alarm
don't-care bytes, deadlines; the clock's existing behaviour without ``now`` is unchanged."""

from __future__ import annotations

import pytest
from device_harness import Clock, Lines

from viridian.devices.cmos import (
    B_24H,
    B_AIE,
    B_PIE,
    B_SET,
    B_UIE,
    C_AF,
    C_IRQF,
    C_PF,
    C_UF,
    DATA_PORT,
    INDEX_PORT,
    REG_A,
    REG_B,
    REG_C,
    RTC_IRQ,
    Cmos,
)

HZ = 2_000_000_000


def make() -> tuple[Cmos, Clock, Lines]:
    clock, lines = Clock(), Lines()
    return Cmos(lambda: clock.t / HZ, now=clock, tsc_hz=HZ, irq=lines), clock, lines


def rd(c: Cmos, reg: int) -> int:
    c.write(INDEX_PORT, 1, reg)
    return c.read(DATA_PORT, 1)


def wr(c: Cmos, reg: int, value: int) -> None:
    c.write(INDEX_PORT, 1, reg)
    c.write(DATA_PORT, 1, value)


# RS -> interrupts per second with the 32.768 kHz time base (data sheet Table "Periodic Interrupt Rate")
RATES = [(1, 256), (2, 128), (3, 8192), (4, 4096), (5, 2048), (6, 1024), (7, 512), (8, 256), (9, 128), (10, 64),
         (11, 32), (12, 16), (13, 8), (14, 4), (15, 2)]


@pytest.mark.parametrize("rs, per_second", RATES)
def test_periodic_rate_table(rs: int, per_second: int) -> None:
    c, clock, lines = make()
    wr(c, REG_A, 0x20 | rs)
    wr(c, REG_B, B_24H | B_PIE)
    deadlines = []
    for _ in range(3):
        d = c.next_deadline()
        assert d is not None
        clock.t = d
        c.advance(d)
        assert rd(c, REG_C) & ~C_UF == C_IRQF | C_PF  # (UF too at whole seconds)
        deadlines.append(d)
    period = deadlines[1] - deadlines[0]
    assert abs(period - HZ // per_second) <= 1 and abs(deadlines[2] - deadlines[1] - period) <= 1
    assert lines.log == [(RTC_IRQ, True), (RTC_IRQ, False)] * 3


def test_no_periodic_with_rs_zero_or_divider_reset() -> None:
    for a in (0x20, 0x66, 0x76):
        c, clock, lines = make()
        wr(c, REG_A, a)
        wr(c, REG_B, B_24H | B_PIE)
        clock.t = HZ // 10
        assert rd(c, REG_C) & C_PF == 0 and c.next_deadline() is None and lines.log == []


def test_flags_set_without_enables_and_irqf_follows_enables() -> None:
    c, clock, lines = make()
    clock.t = HZ + 1  # one update ended, 1024 Hz periodic ran (status A's power-on rate)
    c.advance(clock.t)
    assert lines.log == []
    wr(c, REG_B, B_24H | B_UIE)  # enabling with the flag already set raises IRQF at once
    assert lines.log == [(RTC_IRQ, True)]
    assert rd(c, REG_C) == C_IRQF | C_UF | C_PF
    assert rd(c, REG_C) == 0 and lines.log[-1] == (RTC_IRQ, False)


def test_update_ended_once_per_second_and_set_inhibits_and_clears_uie() -> None:
    c, clock, lines = make()
    wr(c, REG_A, 0x20)  # no periodic
    wr(c, REG_B, B_24H | B_UIE)
    assert c.next_deadline() == HZ
    clock.t = HZ - 1
    assert rd(c, REG_C) == 0
    clock.t = HZ
    c.advance(clock.t)
    assert lines.log == [(RTC_IRQ, True)] and c.next_deadline() is None  # IRQF set: nothing more to raise
    assert rd(c, REG_C) == C_IRQF | C_UF
    wr(c, REG_B, B_24H | B_UIE | B_SET)
    assert rd(c, REG_B) == B_24H | B_SET  # "UIE is cleared when SET is written 1"
    clock.t = 5 * HZ
    assert rd(c, REG_C) == 0  # updates inhibited


def test_alarm_exact_and_dont_care() -> None:
    c, clock, lines = make()  # virtual time 0 = 2025-01-01 00:00:00 (BCD, 24-hour)
    wr(c, REG_A, 0x20)
    wr(c, 0x05, 0x00)
    wr(c, 0x03, 0x01)
    wr(c, 0x01, 0x30)  # 00:01:30
    wr(c, REG_B, B_24H | B_AIE)
    assert c.next_deadline() == 90 * HZ
    clock.t = 90 * HZ
    c.advance(clock.t)
    assert rd(c, REG_C) == C_IRQF | C_AF | C_UF
    assert c.next_deadline() == (86400 + 90) * HZ  # the same time tomorrow
    wr(c, 0x03, 0xC0)  # any minute: 00:02:30 is next
    assert c.next_deadline() == 150 * HZ
    wr(c, 0x05, 0xFF)
    wr(c, 0x01, 0xFF)  # every second
    assert c.next_deadline() == 91 * HZ
    wr(c, 0x01, 0x75)  # BCD 75 seconds never matches
    assert c.next_deadline() is None
    assert (RTC_IRQ, True) in lines.log


def test_alarm_in_12_hour_binary_mode() -> None:
    c, _, _ = make()
    wr(c, REG_A, 0x20)
    wr(c, REG_B, 0x04)  # binary, 12-hour
    wr(c, 0x05, 0x80 | 1)  # 1 PM
    wr(c, 0x03, 0)
    wr(c, 0x01, 0)
    wr(c, REG_B, 0x04 | B_AIE)
    assert c.next_deadline() == 13 * 3600 * HZ


def test_without_now_the_clock_behaves_as_before() -> None:
    t = [0.0]
    c = Cmos(lambda: t[0])
    t[0] = 3661.5
    assert (rd(c, 0x04), rd(c, 0x02), rd(c, 0x00)) == (0x01, 0x01, 0x01)
    assert rd(c, REG_A) == 0x26 and rd(c, 0x0D) == 0x80


def test_state_round_trips() -> None:
    c, clock, _ = make()
    wr(c, REG_B, B_24H | B_PIE)
    clock.t = HZ // 3
    c.advance(clock.t)
    other, _, _ = make()
    other.load_state(c.save_state())
    assert other.save_state() == c.save_state()
    with pytest.raises(ValueError):
        other.load_state({**c.save_state(), "flags": 0x80})
