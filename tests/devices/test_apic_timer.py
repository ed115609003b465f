"""APIC timer on the virtual TSC (SDM vol. 3 §11.5.4): deadlines computed by hand from the clock rates.

Default clock: TSC 2 GHz, APIC bus 1 GHz -> 2 TSC ticks per bus cycle; divide-by-2 (DCR 0) -> 4 TSC ticks
per timer tick.
"""

from __future__ import annotations

import pytest
from apic_harness import enable

from msr.apic import APIC_LVT_TIMER, APIC_SVR, APIC_TIMER_CURRENT, APIC_TIMER_DIVIDE, APIC_TIMER_INITIAL
from viridian.clock import VirtualClock
from viridian.devices.lapic import LocalApic
from viridian.devices.lapic_defs import timer_divisor

ONE_SHOT, PERIODIC, DEADLINE = 0, 1 << 17, 2 << 17
VEC = 0xEC


def timer_apic(clock: VirtualClock, mode: int, divide: int = 0) -> LocalApic:
    a = enable(LocalApic(0, clock))
    a.write_register(APIC_TIMER_DIVIDE, divide)
    a.write_register(APIC_LVT_TIMER, mode | VEC)
    return a


@pytest.mark.parametrize(
    ("dcr", "divisor"),
    [(0b0000, 2), (0b0001, 4), (0b0010, 8), (0b0011, 16), (0b1000, 32), (0b1001, 64), (0b1010, 128),
     (0b1011, 1)],
)
def test_divide_configuration(dcr: int, divisor: int) -> None:
    assert timer_divisor(dcr) == divisor


def test_one_shot(clock: VirtualClock) -> None:
    clock.set_tsc(1000)
    a = timer_apic(clock, ONE_SHOT)
    a.write_register(APIC_TIMER_INITIAL, 1000)
    assert a.next_deadline_tsc() == 1000 + 1000 * 4
    clock.set_tsc(1000 + 4 * 300 + 3)  # 300 whole ticks elapsed
    assert a.read_register(APIC_TIMER_CURRENT) == 700
    assert not a.poll()
    clock.set_tsc(4999)
    assert not a.poll() and a.read_register(APIC_TIMER_CURRENT) == 1
    clock.set_tsc(5000)
    assert a.poll() and a.irr_vectors() == [VEC]
    assert a.read_register(APIC_TIMER_CURRENT) == 0
    assert a.next_deadline_tsc() is None  # one-shot disarmed itself
    clock.advance_tsc(10**6)
    assert not a.poll()


def test_one_shot_fractional_rate() -> None:
    clock = VirtualClock(tsc_hz=2_500_000_000, apic_hz=1_000_000_000)  # 2.5 TSC ticks per bus cycle
    a = timer_apic(clock, ONE_SHOT, divide=0b1011)  # divide by 1
    a.write_register(APIC_TIMER_INITIAL, 3)
    assert a.next_deadline_tsc() == 8  # ceil(3 * 2.5)
    clock.set_tsc(7)
    assert a.read_register(APIC_TIMER_CURRENT) == 1 and not a.poll()
    clock.set_tsc(8)
    assert a.poll()


def test_periodic(clock: VirtualClock) -> None:
    a = timer_apic(clock, PERIODIC, divide=0b0001)  # divide by 4 -> 8 TSC per tick
    a.write_register(APIC_TIMER_INITIAL, 100)  # period 800 TSC
    assert a.next_deadline_tsc() == 800
    clock.set_tsc(800)
    assert a.poll()
    assert a.read_register(APIC_TIMER_CURRENT) == 100  # reloaded
    assert a.next_deadline_tsc() == 1600
    clock.set_tsc(1600 + 8 * 25)
    assert a.read_register(APIC_TIMER_CURRENT) == 75
    a.acknowledge()
    a.eoi()
    assert a.poll()  # the 1600 expiry
    clock.set_tsc(800 * 10 + 1)  # several periods late: one coalesced interrupt
    assert a.poll() and not a.poll()
    assert a.next_deadline_tsc() == 800 * 11  # no drift: expiries stay on the original grid


def test_initial_count_zero_stops(clock: VirtualClock) -> None:
    a = timer_apic(clock, PERIODIC)
    a.write_register(APIC_TIMER_INITIAL, 10)
    a.write_register(APIC_TIMER_INITIAL, 0)
    assert a.next_deadline_tsc() is None
    clock.advance_tsc(10**6)
    assert not a.poll() and a.read_register(APIC_TIMER_CURRENT) == 0


def test_masked_timer_counts_without_interrupt(clock: VirtualClock) -> None:
    a = timer_apic(clock, PERIODIC | 0x10000)
    a.write_register(APIC_TIMER_INITIAL, 10)  # period 40
    assert a.next_deadline_tsc() is None
    clock.set_tsc(130)  # three expiries passed while masked
    assert a.read_register(APIC_TIMER_CURRENT) == 10 - (130 // 4 - 30)
    a.write_register(APIC_LVT_TIMER, PERIODIC | VEC)  # unmask: past expiries stay unsignalled
    assert a.irr_vectors() == []
    assert a.next_deadline_tsc() == 160


def test_divide_change_rebases(clock: VirtualClock) -> None:
    a = timer_apic(clock, ONE_SHOT)
    a.write_register(APIC_TIMER_INITIAL, 100)
    clock.set_tsc(40)  # 10 ticks of 4 TSC
    a.write_register(APIC_TIMER_DIVIDE, 0b1011)  # divide by 1: 2 TSC per tick from here
    assert a.read_register(APIC_TIMER_CURRENT) == 90
    assert a.next_deadline_tsc() == 40 + 90 * 2


def test_tsc_deadline(clock: VirtualClock) -> None:
    a = timer_apic(clock, DEADLINE)
    a.write_register(APIC_TIMER_INITIAL, 50)  # ignored in TSC-deadline mode
    assert a.read_register(APIC_TIMER_INITIAL) == 0 and a.read_register(APIC_TIMER_CURRENT) == 0
    a.write_tsc_deadline(10_000)
    assert a.read_tsc_deadline() == 10_000 and a.next_deadline_tsc() == 10_000
    clock.set_tsc(9_999)
    assert not a.poll()
    clock.set_tsc(10_000)
    assert a.poll() and a.irr_vectors() == [VEC]
    assert a.read_tsc_deadline() == 0 and a.next_deadline_tsc() is None  # cleared when it fires


def test_tsc_deadline_with_guest_offset(clock: VirtualClock) -> None:
    a = timer_apic(clock, DEADLINE)
    a.tsc_offset = 5_000  # guest TSC runs 5000 ahead
    a.write_tsc_deadline(12_000)
    assert a.next_deadline_tsc() == 7_000
    a.write_tsc_deadline(100)  # already in the past: fires at once
    assert a.irr_vectors() == [VEC] and a.read_tsc_deadline() == 0


def test_tsc_deadline_disarm_and_mode_switch(clock: VirtualClock) -> None:
    a = timer_apic(clock, DEADLINE)
    a.write_tsc_deadline(500)
    a.write_tsc_deadline(0)
    assert a.next_deadline_tsc() is None
    a.write_tsc_deadline(500)
    a.write_register(APIC_LVT_TIMER, ONE_SHOT | VEC)  # leaving deadline mode disarms
    assert a.read_tsc_deadline() == 0
    a.write_tsc_deadline(700)  # ignored outside deadline mode
    assert a.read_tsc_deadline() == 0 and a.next_deadline_tsc() is None
    a.write_register(APIC_TIMER_INITIAL, 10)
    a.write_register(APIC_LVT_TIMER, DEADLINE | VEC)  # entering it clears the initial count
    assert a.read_register(APIC_TIMER_INITIAL) == 0 and a.next_deadline_tsc() is None


def test_oneshot_to_periodic_keeps_counting(clock: VirtualClock) -> None:
    a = timer_apic(clock, ONE_SHOT)
    a.write_register(APIC_TIMER_INITIAL, 10)
    clock.set_tsc(12)  # 3 ticks
    a.write_register(APIC_LVT_TIMER, PERIODIC | VEC)
    assert a.read_register(APIC_TIMER_CURRENT) == 7
    assert a.next_deadline_tsc() == 12 + 7 * 4
    clock.set_tsc(40)
    assert a.poll() and a.next_deadline_tsc() == 40 + 40


def test_reserved_timer_mode_does_not_run(clock: VirtualClock) -> None:
    a = timer_apic(clock, 3 << 17)
    a.write_register(APIC_TIMER_INITIAL, 10)
    assert a.next_deadline_tsc() is None and a.read_register(APIC_TIMER_CURRENT) == 0


def test_software_disable_masks_timer(clock: VirtualClock) -> None:
    a = timer_apic(clock, ONE_SHOT)
    a.write_register(APIC_TIMER_INITIAL, 10)
    a.write_register(APIC_SVR, 0xFF)
    clock.set_tsc(100)
    assert not a.poll() and a.irr_vectors() == []
