"""Local APIC core semantics in xAPIC mode: reset state, priorities, EOI, ESR, LVT/SVR (SDM vol. 3 ch. 11)."""

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
    APIC_LVT_ERROR,
    APIC_LVT_LINT0,
    APIC_LVT_LINT1,
    APIC_LVT_PERF,
    APIC_LVT_THERMAL,
    APIC_LVT_TIMER,
    APIC_PPR,
    APIC_RRD,
    APIC_SVR,
    APIC_TIMER_CURRENT,
    APIC_TIMER_DIVIDE,
    APIC_TIMER_INITIAL,
    APIC_TMR,
    APIC_TPR,
    APIC_VERSION,
)
from viridian.clock import VirtualClock
from viridian.devices.lapic import LocalApic

LVTS = (APIC_LVT_TIMER, APIC_LVT_THERMAL, APIC_LVT_PERF, APIC_LVT_LINT0, APIC_LVT_LINT1, APIC_LVT_ERROR)

# §11.4.7.1 power-up state, read through the xAPIC MMIO interface of VP 3.
RESET_VALUES = {
    APIC_ID: 3 << 24,
    APIC_VERSION: 0x0005_0014,
    APIC_TPR: 0,
    APIC_APR: 0,
    APIC_PPR: 0,
    APIC_LDR: 0,
    APIC_DFR: 0xFFFF_FFFF,
    APIC_SVR: 0xFF,
    APIC_ESR: 0,
    APIC_ICR_LOW: 0,
    APIC_ICR_HIGH: 0,
    APIC_TIMER_INITIAL: 0,
    APIC_TIMER_CURRENT: 0,
    APIC_TIMER_DIVIDE: 0,
    APIC_RRD: 0,
    APIC_EOI: 0,
    **{off: 0x10000 for off in LVTS},
    **{base + 16 * i: 0 for base in (APIC_ISR, APIC_TMR, APIC_IRR) for i in range(8)},
}


@pytest.mark.parametrize(("offset", "value"), sorted(RESET_VALUES.items()))
def test_reset_state(clock: VirtualClock, offset: int, value: int) -> None:
    a = LocalApic(3, clock)
    assert a.read_register(offset) == value
    assert a.hw_enabled and not a.x2apic and not a.sw_enabled
    assert a.read_register(APIC_ESR) == 0  # no illegal-register error from any of these


def test_version_with_cmci(clock: VirtualClock) -> None:
    a = LocalApic(0, clock, cmci=True)
    assert a.read_register(APIC_VERSION) == 0x0006_0014
    assert a.read_register(APIC_LVT_CMCI) == 0x10000
    plain = LocalApic(0, clock)
    assert plain.read_register(APIC_LVT_CMCI) == 0  # reserved without CMCI: reads 0, logs an error
    plain.write_register(APIC_ESR, 0)
    assert plain.read_register(APIC_ESR) == 0x80


def test_priority_nesting_and_eoi(apic: LocalApic) -> None:
    """§11.8.3.1: PPR follows the highest in-service class; only higher classes preempt."""
    assert apic.assert_interrupt(0x41)
    assert apic.pending_vector() == 0x41
    assert apic.acknowledge() == 0x41
    assert apic.read_register(APIC_PPR) == 0x40
    apic.assert_interrupt(0x45)  # same class: waits
    assert apic.pending_vector() is None
    apic.assert_interrupt(0x52)  # higher class: nests
    assert apic.pending_vector() == 0x52
    assert apic.acknowledge() == 0x52
    assert apic.isr_vectors() == [0x41, 0x52] and apic.highest_isr() == 0x52
    assert apic.read_register(APIC_ISR + 32) == (1 << 1) | (1 << 18)  # bits 0x41 and 0x52 in ISR[2]
    apic.eoi()  # clears the highest ISR bit
    assert apic.isr_vectors() == [0x41]
    assert apic.pending_vector() is None  # 0x45 is still blocked by 0x41
    apic.write_register(APIC_EOI, 0)
    assert apic.pending_vector() == 0x45 and apic.read_register(APIC_PPR) == 0


def test_tpr_masks_by_class(apic: LocalApic) -> None:
    apic.write_register(APIC_TPR, 0x5F)
    assert apic.read_register(APIC_PPR) == 0x5F
    apic.assert_interrupt(0x5A)
    assert apic.pending_vector() is None  # class 5 is not above TPR class 5
    apic.assert_interrupt(0x60)
    assert apic.pending_vector() == 0x60
    apic.acknowledge()
    assert apic.read_register(APIC_PPR) == 0x60  # ISR class beats TPR
    apic.set_tpr(0x7C)
    assert apic.read_register(APIC_PPR) == 0x7C and apic.get_tpr() == 0x7C
    apic.write_register(APIC_TPR, 0xFFFF_FF12)  # bits 31:8 ignored in xAPIC mode
    assert apic.read_register(APIC_TPR) == 0x12


def test_apr(apic: LocalApic) -> None:
    apic.write_register(APIC_TPR, 0x30)
    assert apic.read_register(APIC_APR) == 0x30
    apic.assert_interrupt(0x84)
    assert apic.read_register(APIC_APR) == 0x80


def test_acknowledge_without_pending_returns_spurious(clock: VirtualClock) -> None:
    a = enable(LocalApic(0, clock), spurious=0xEF)
    assert a.acknowledge() == 0xEF  # §11.9: no ISR bit is set
    assert a.isr_vectors() == []


def test_level_eoi_broadcasts_edge_does_not(apic: LocalApic) -> None:
    apic.assert_interrupt(0x30, level=True)
    apic.assert_interrupt(0x20)
    assert apic.is_level(0x30) and not apic.is_level(0x20)
    assert apic.read_register(APIC_TMR + 16) == 1 << 16
    assert apic.acknowledge() == 0x30
    apic.eoi()
    assert apic.broadcasts == [0x30]  # type: ignore[attr-defined]
    assert apic.acknowledge() == 0x20
    apic.eoi()
    apic.eoi()  # nothing in service: no effect
    assert apic.broadcasts == [0x30]  # type: ignore[attr-defined]


def test_edge_reassert_clears_tmr(apic: LocalApic) -> None:
    apic.assert_interrupt(0x30, level=True)
    apic.assert_interrupt(0x30)
    assert not apic.is_level(0x30) and apic.irr_vectors() == [0x30]


@pytest.mark.parametrize("vector", [0, 1, 2, 14, 15])
def test_illegal_vectors_dropped_with_esr(apic: LocalApic, vector: int) -> None:
    assert not apic.assert_interrupt(vector)
    assert apic.irr_vectors() == []
    assert apic.read_register(APIC_ESR) == 0  # not latched until written (§11.5.3)
    apic.write_register(APIC_ESR, 0)
    assert apic.read_register(APIC_ESR) == 0x40  # received illegal vector
    apic.write_register(APIC_ESR, 0)
    assert apic.read_register(APIC_ESR) == 0  # back-to-back writes clear


def test_error_interrupt_through_lvt_error(apic: LocalApic) -> None:
    apic.write_register(APIC_LVT_ERROR, 0xFE)
    apic.assert_interrupt(3)
    assert apic.irr_vectors() == [0xFE]
    apic.write_register(APIC_LVT_ERROR, 0x05)  # illegal error vector: recorded, no recursion
    apic.assert_interrupt(4)
    assert apic.irr_vectors() == [0xFE]


def test_software_disabled_drops_fixed(clock: VirtualClock) -> None:
    a = LocalApic(0, clock)
    assert not a.assert_interrupt(0x40) and a.irr_vectors() == []
    enable(a)
    a.assert_interrupt(0x40)
    a.write_register(APIC_SVR, 0xFF)  # software disable keeps IRR (§11.4.7.2)
    assert a.irr_vectors() == [0x40] and not a.assert_interrupt(0x50)


def test_software_disable_masks_lvts(apic: LocalApic) -> None:
    for off in LVTS:
        apic.write_register(off, 0x31)
        assert apic.read_register(off) == 0x31
    apic.write_register(APIC_SVR, 0x0FF)
    for off in LVTS:
        assert apic.read_register(off) == 0x10031
        apic.write_register(off, 0x32)  # cannot unmask while disabled
        assert apic.read_register(off) == 0x10032
    enable(apic)
    assert all(apic.read_register(off) & 0x10000 for off in LVTS)


@pytest.mark.parametrize(
    ("offset", "written", "read"),
    [
        (APIC_LVT_TIMER, 0xFFFF_FFFF, 0x0007_00FF),
        (APIC_LVT_THERMAL, 0xFFFF_FFFF, 0x0001_07FF),
        (APIC_LVT_PERF, 0xFFFF_FFFF, 0x0001_07FF),
        (APIC_LVT_LINT0, 0xFFFF_FFFF, 0x0001_A7FF),
        (APIC_LVT_LINT1, 0xFFFF_FFFF, 0x0001_A7FF),
        (APIC_LVT_ERROR, 0xFFFF_FFFF, 0x0001_00FF),
        (APIC_SVR, 0xFFFF_FFFF, 0x3FF),
        (APIC_LDR, 0xFFFF_FFFF, 0xFF00_0000),
        (APIC_DFR, 0x0000_0000, 0x0FFF_FFFF),
        (APIC_ID, 0xFFFF_FFFF, 0xFF00_0000),
        (APIC_TIMER_DIVIDE, 0xFFFF_FFFF, 0xB),
        (APIC_ICR_HIGH, 0xFFFF_FFFF, 0xFF00_0000),
        (APIC_VERSION, 0, 0x0005_0014),  # read-only: ignored
        (APIC_PPR, 0xFF, 0),
        (APIC_TIMER_CURRENT, 5, 0),
    ],
)
def test_xapic_writable_bits(apic: LocalApic, offset: int, written: int, read: int) -> None:
    apic.write_register(offset, written)
    assert apic.read_register(offset) == read
    apic.write_register(APIC_ESR, 0)
    assert apic.read_register(APIC_ESR) == 0


@pytest.mark.parametrize("offset", [0x000, 0x010, 0x040, 0x070, 0x290, 0x2E0, 0x3A0, 0x3F0, 0x400, 0xFF0])
def test_xapic_reserved_offsets(apic: LocalApic, offset: int) -> None:
    assert apic.read_register(offset) == 0
    apic.write_register(offset, 0xFFFF_FFFF)
    apic.write_register(APIC_ESR, 0)
    assert apic.read_register(APIC_ESR) == 0x80  # illegal register address


@pytest.mark.parametrize("offset", [0x21, 0x24, 0x8C, 0x30F])
def test_xapic_unaligned_offsets(apic: LocalApic, offset: int) -> None:
    apic.write_register(APIC_TPR, 0x20)
    apic.write_register(offset, 0xFFFF_FFFF)
    assert apic.read_register(offset) == 0
    assert apic.read_register(APIC_TPR) == 0x20


def test_esr_write_then_read(apic: LocalApic) -> None:
    apic.write_register(0x3F0, 1)  # SELF IPI is reserved in xAPIC mode
    assert apic.read_register(APIC_ESR) == 0
    apic.write_register(APIC_ESR, 0xFFFF)
    assert apic.read_register(APIC_ESR) == 0x80
    apic.write_register(APIC_ICR_LOW, 0x4005)  # fixed IPI with vector 5: send illegal, not sent
    apic.write_register(APIC_ESR, 0)
    assert apic.read_register(APIC_ESR) == 0x20


def test_init_keeps_id_resets_rest(clock: VirtualClock) -> None:
    a = enable(LocalApic(2, clock))
    a.write_register(APIC_ID, 0x7 << 24)
    a.write_register(APIC_LDR, 0x0100_0000)
    a.write_register(APIC_TPR, 0x40)
    a.assert_interrupt(0x80)
    a.init()
    assert a.read_register(APIC_ID) == 0x7 << 24  # §11.4.7.3
    assert a.read_register(APIC_LDR) == 0 and a.read_register(APIC_TPR) == 0
    assert a.irr_vectors() == [] and not a.sw_enabled
    a.reset()
    assert a.read_register(APIC_ID) == 2 << 24


def test_fire_lvt_lint(clock: VirtualClock) -> None:
    a = enable(LocalApic(0, clock))
    assert not a.fire_lvt(APIC_LVT_LINT0)  # masked at reset
    a.write_register(APIC_LVT_LINT0, 0x8000 | 0x61)  # fixed, level
    assert a.fire_lvt(APIC_LVT_LINT0) and a.is_level(0x61)
    a.write_register(APIC_LVT_LINT1, 0x700)  # ExtINT: the machine's PIC answers
    assert not a.fire_lvt(APIC_LVT_LINT1)


def test_bitmap_views(apic: LocalApic) -> None:
    for v in (0x10, 0x3F, 0x40, 0xFF):
        apic.assert_interrupt(v)
    assert apic.irr_vectors() == [0x10, 0x3F, 0x40, 0xFF]
    assert apic.irr == (1 << 0x10) | (1 << 0x3F) | (1 << 0x40) | (1 << 0xFF)
    regs = [apic.read_register(APIC_IRR + 16 * i) for i in range(8)]
    assert regs == [1 << 16, 1 << 31, 1, 0, 0, 0, 0, 1 << 31]
    assert apic.highest_irr() == 0xFF
