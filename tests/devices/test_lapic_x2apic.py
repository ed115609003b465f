"""x2APIC-mode register semantics of the local APIC (SDM vol. 3 §11.12) and mode transitions."""

from __future__ import annotations

import pytest
from apic_harness import enable

from msr.apic import (
    APIC_APR,
    APIC_DFR,
    APIC_EOI,
    APIC_ESR,
    APIC_ICR_HIGH,
    APIC_ICR_LOW,
    APIC_ID,
    APIC_IRR,
    APIC_ISR,
    APIC_LDR,
    APIC_LVT_CMCI,
    APIC_LVT_LINT0,
    APIC_LVT_TIMER,
    APIC_PPR,
    APIC_RRD,
    APIC_SELF_IPI,
    APIC_SVR,
    APIC_TIMER_CURRENT,
    APIC_TIMER_DIVIDE,
    APIC_TIMER_INITIAL,
    APIC_TMR,
    APIC_TPR,
    APIC_VERSION,
)
from msr.faults import GuestFault
from viridian.clock import VirtualClock
from viridian.devices.lapic import LocalApic


def x2(clock: VirtualClock, vp: int = 0x35) -> LocalApic:
    a = enable(LocalApic(vp, clock))
    a.set_mode(True, True)
    return a


def test_x2apic_id_and_ldr(clock: VirtualClock) -> None:
    a = x2(clock, 0x35)
    assert a.read_register(APIC_ID) == 0x35  # 32-bit ID, not shifted
    assert a.read_register(APIC_LDR) == (0x3 << 16) | (1 << 5)  # cluster ID[19:4], bit ID[3:0]
    assert a.sw_enabled  # xAPIC -> x2APIC keeps the registers


@pytest.mark.parametrize("offset", [APIC_APR, APIC_RRD, APIC_DFR, APIC_ICR_HIGH, APIC_EOI, APIC_SELF_IPI,
                                    APIC_LVT_CMCI, 0x000, 0x040, 0x290, 0x3A0])
def test_x2apic_unreadable(clock: VirtualClock, offset: int) -> None:
    with pytest.raises(GuestFault):
        x2(clock).read_register(offset)


@pytest.mark.parametrize("offset", [APIC_ID, APIC_VERSION, APIC_PPR, APIC_LDR, APIC_TIMER_CURRENT,
                                    APIC_ISR, APIC_TMR + 0x70, APIC_IRR + 0x30,
                                    APIC_APR, APIC_RRD, APIC_DFR, APIC_ICR_HIGH, APIC_LVT_CMCI, 0x3A0])
def test_x2apic_unwritable(clock: VirtualClock, offset: int) -> None:
    with pytest.raises(GuestFault):
        x2(clock).write_register(offset, 0)


@pytest.mark.parametrize(
    ("offset", "bad"),
    [
        (APIC_TPR, 0x100),
        (APIC_EOI, 1),
        (APIC_ESR, 1),
        (APIC_SVR, 0x1000),
        (APIC_LVT_TIMER, 0x80000),
        (APIC_LVT_LINT0, 0x20000),
        (APIC_TIMER_DIVIDE, 0x4),
        (APIC_SELF_IPI, 0x100),
        (APIC_TPR, 1 << 32),
        (APIC_ICR_LOW, 1 << 12),  # delivery status is reserved in x2APIC mode
        (APIC_ICR_LOW, 1 << 20),
    ],
)
def test_x2apic_reserved_bits(clock: VirtualClock, offset: int, bad: int) -> None:
    a = x2(clock)
    with pytest.raises(GuestFault):
        a.write_register(offset, bad)


def test_x2apic_writes(clock: VirtualClock) -> None:
    a = x2(clock)
    a.write_register(APIC_TPR, 0x20)
    a.write_register(APIC_LVT_TIMER, 0x1000 | 0x40)  # read-only status bit: accepted, dropped
    assert a.read_register(APIC_LVT_TIMER) == 0x40
    a.write_register(APIC_TIMER_INITIAL, 0xFFFF_FFFF)
    assert a.read_register(APIC_TIMER_INITIAL) == 0xFFFF_FFFF
    a.write_register(APIC_SELF_IPI, 0x33)
    assert a.irr_vectors() == [0x33]
    a.acknowledge()
    a.write_register(APIC_EOI, 0)
    assert a.isr_vectors() == []


def test_x2apic_icr_is_64_bit(clock: VirtualClock) -> None:
    a = x2(clock)
    a.write_icr((0x1234 << 32) | 0x4000 | 0x50)  # physical to ID 0x1234: no bus, not delivered
    assert a.read_icr() == (0x1234 << 32) | 0x4000 | 0x50
    assert a.read_register(APIC_ICR_LOW) == 0x4050
    a.write_icr((1 << 18) | 0x44)  # self shorthand is delivered even without a bus
    assert a.irr_vectors() == [0x44]


def test_x2apic_esr_errors_still_logged(clock: VirtualClock) -> None:
    a = x2(clock)
    a.write_register(APIC_SELF_IPI, 0x07)  # illegal vector: send illegal vector
    a.write_register(APIC_ESR, 0)
    assert a.read_register(APIC_ESR) == 0x20


def test_disable_resets_and_reenable_is_xapic(clock: VirtualClock) -> None:
    a = x2(clock, 0x107)
    a.write_register(APIC_TPR, 0x40)
    a.assert_interrupt(0x90)
    a.set_mode(False, False)
    assert not a.hw_enabled and not a.assert_interrupt(0x91)
    assert a.read_register(APIC_TPR) == 0  # disabled: nothing answers
    a.set_mode(True, False)
    assert a.read_register(APIC_ID) == 0x07 << 24  # low byte of the x2APIC ID
    assert a.read_register(APIC_TPR) == 0 and a.irr_vectors() == [] and not a.sw_enabled


def test_init_in_x2apic_mode_keeps_mode(clock: VirtualClock) -> None:
    a = x2(clock, 0x21)
    a.init()
    assert a.x2apic and a.read_register(APIC_ID) == 0x21
    assert a.read_register(APIC_LDR) == (0x2 << 16) | (1 << 1)
    assert not a.sw_enabled
    a.reset()
    assert not a.x2apic and a.hw_enabled


def test_invalid_mode_rejected(clock: VirtualClock) -> None:
    with pytest.raises(ValueError, match="not a valid"):
        LocalApic(0, clock).set_mode(False, True)
