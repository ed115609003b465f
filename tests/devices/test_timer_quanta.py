"""The timer devices give the same interrupts whatever the machine's scheduling (viridian.devices.pc_api): a
device advanced at random times -- never past its own next_deadline, as the machine runs -- raises its line at
exactly the ticks it raises it when advanced only at its deadlines (HPET periodic/one-shot, RTC periodic with
status C read in the handler, PM timer SCI)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from device_harness import Clock
from hypothesis import given, settings
from hypothesis import strategies as st

from viridian.devices.cmos import B_24H, B_PIE, DATA_PORT, INDEX_PORT, Cmos
from viridian.devices.hpet import Hpet
from viridian.devices.pm_timer import PM_BASE, TMR_EN, TMR_STS, AcpiPm

HZ = 2_000_000_000


class Rises:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.at: list[int] = []

    def set_irq(self, irq: int, level: bool) -> None:
        if level:
            self.at.append(self.clock.t)

    def gsi(self, pin: int, level: bool) -> None:
        self.set_irq(pin, level)


def simulate(make: Callable[[Clock, Rises], Any], steps: list[int], end: int,
             on_rise: Callable[[Any], None] = lambda dev: None) -> list[int]:
    clock = Clock()
    rises = Rises(clock)
    dev = make(clock, rises)
    i = 0
    while clock.t < end:
        d = dev.next_deadline()
        step = steps[i % len(steps)] if steps else None
        i += 1
        target = end if step is None else min(end, clock.t + step)
        if d is not None:
            target = min(target, d)  # the machine never runs past a device's deadline
        clock.t = max(target, clock.t + 1)
        n = len(rises.at)
        dev.advance(clock.t)
        if len(rises.at) > n:
            on_rise(dev)
    return rises.at


def hpet(periodic: bool, width32: bool, cmp: int, period: int) -> Callable[[Clock, Rises], Hpet]:
    def make(clock: Clock, rises: Rises) -> Hpet:
        h = Hpet(clock, HZ, irq=rises, gsi=rises.gsi)
        conf = 0x4 | 2 << 9 | (0x48 if periodic else 0) | (0x100 if width32 else 0)
        h.mmio_write(0x140, 4, conf)
        h.mmio_write(0x148, 8, cmp)
        if periodic:
            h.mmio_write(0x148, 8, period)
        h.mmio_write(0x10, 4, 1)
        return h
    return make


STEPS = st.lists(st.integers(50_000, 3_000_000), min_size=1, max_size=20)  # at most 1200 steps to the end


@settings(max_examples=40, deadline=None)
@given(st.booleans(), st.booleans(), st.integers(1, 200_000), st.integers(2_000, 50_000), STEPS)
def test_hpet_edges_do_not_depend_on_when_it_is_advanced(periodic: bool, width32: bool, cmp: int, period: int,
                                                          steps: list[int]) -> None:
    make = hpet(periodic, width32, cmp, period)
    end = 40_000_000
    assert simulate(make, steps, end) == simulate(make, [], end)


def rtc(rs: int) -> Callable[[Clock, Rises], Cmos]:
    def make(clock: Clock, rises: Rises) -> Cmos:
        c = Cmos(lambda: clock.t / HZ, now=clock, tsc_hz=HZ, irq=rises)
        for reg, value in ((0x0A, 0x20 | rs), (0x0B, B_24H | B_PIE)):
            c.write(INDEX_PORT, 1, reg)
            c.write(DATA_PORT, 1, value)
        return c
    return make


def read_c(c: Cmos) -> None:
    c.write(INDEX_PORT, 1, 0x0C)
    c.read(DATA_PORT, 1)


@settings(max_examples=30, deadline=None)
@given(st.integers(3, 15), STEPS)
def test_rtc_periodic_edges_do_not_depend_on_when_it_is_advanced(rs: int, steps: list[int]) -> None:
    make = rtc(rs)
    end = 60_000_000
    assert simulate(make, steps, end, read_c) == simulate(make, [], end, read_c)


def pm(clock: Clock, rises: Rises) -> AcpiPm:
    p = AcpiPm(clock, HZ, irq=rises)
    p.write(PM_BASE + 2, 2, TMR_EN)
    return p


def clear_tmr_sts(p: AcpiPm) -> None:
    p.write(PM_BASE, 2, TMR_STS)


@settings(max_examples=10, deadline=None)
@given(st.lists(st.integers(50_000_000, 900_000_000), min_size=1, max_size=10))
def test_pm_timer_sci_does_not_depend_on_when_it_is_advanced(steps: list[int]) -> None:
    end = 12 * HZ  # five flips of bit 23
    expected = simulate(pm, [], end, clear_tmr_sts)
    assert len(expected) == 5 and simulate(pm, steps, end, clear_tmr_sts) == expected
