"""msr.arch: the architectural MSRs the engine lacks, against Intel SDM vol. 3/4 rules (values by hand)."""

from __future__ import annotations

import pytest

from msr import NOT_MINE, Fault
from msr.arch import ARCH_MSRS, PAT_DEFAULT, ArchFeatures, ArchMsrState
from viridian.clock import VirtualClock
from viridian.devices.lapic import LocalApic

APIC_BASE, TSC, TSC_ADJUST, TSC_DEADLINE = 0x1B, 0x10, 0x3B, 0x6E0
MISC_ENABLE, PAT, MTRRCAP, MTRR_DEF_TYPE = 0x1A0, 0x277, 0xFE, 0x2FF
FEATURE_CONTROL, MCG_CAP, MCG_STATUS, PLATFORM_INFO = 0x3A, 0x179, 0x17A, 0xCE


def state(vp: int = 0, **features: object) -> ArchMsrState:
    clock = VirtualClock()
    return ArchMsrState(vp, LocalApic(vp, clock), clock, ArchFeatures(**features))  # type: ignore[arg-type]


def rd(s: ArchMsrState, index: int) -> int | str:
    res = ARCH_MSRS.rdmsr(s, index)
    return "#GP" if isinstance(res, Fault) else res  # type: ignore[return-value]


def wr(s: ArchMsrState, index: int, value: int) -> str | None:
    res = ARCH_MSRS.wrmsr(s, index, value)
    return "#GP" if isinstance(res, Fault) else res  # type: ignore[return-value]


def test_apic_base_after_reset() -> None:
    # SDM3 §11.4.4: base 0xFEE00000, EN (bit 11); BSP (bit 8) on the bootstrap processor only.
    assert rd(state(0), APIC_BASE) == 0xFEE00900
    assert rd(state(1), APIC_BASE) == 0xFEE00800


@pytest.mark.parametrize("value", [0xFEE00800 | 1, 0xFEE00800 | 0x200, 1 << 40, 1 << 63])
def test_apic_base_reserved_bits(value: int) -> None:
    # 7:0, 9 reserved; bits >= MAXPHYADDR (40) reserved.
    assert wr(state(), APIC_BASE, value) == "#GP"


def test_apic_base_mode_transitions() -> None:
    s = state()
    assert wr(s, APIC_BASE, 0xFEE00400) == "#GP"  # EN=0, EXTD=1: invalid
    assert wr(s, APIC_BASE, 0xFEE00D00) is None and s.apic.x2apic  # xAPIC -> x2APIC
    assert rd(s, APIC_BASE) == 0xFEE00D00
    assert wr(s, APIC_BASE, 0xFEE00900) == "#GP"  # x2APIC -> xAPIC directly: illegal (SDM3 §11.12.5.1)
    assert wr(s, APIC_BASE, 0xFEE00100) is None and not s.apic.hw_enabled  # x2APIC -> disabled
    assert wr(s, APIC_BASE, 0xFEE00D00) == "#GP"  # disabled -> x2APIC: illegal
    assert wr(s, APIC_BASE, 0xFEE00900) is None and s.apic.hw_enabled and not s.apic.x2apic
    assert wr(s, APIC_BASE, 0xFED00900) is None and rd(s, APIC_BASE) == 0xFED00900  # relocation


def test_apic_base_without_x2apic_feature() -> None:
    assert wr(state(x2apic=False), APIC_BASE, 0xFEE00D00) == "#GP"  # EXTD reserved without CPUID x2APIC


def test_tsc_write_moves_tsc_adjust_and_back() -> None:
    # SDM3 §18.17.3: WRMSR IA32_TSC adds the same delta to IA32_TSC_ADJUST, and vice versa.
    s = state()
    s.clock.advance_tsc(1000)
    assert rd(s, TSC) == 1000 and rd(s, TSC_ADJUST) == 0
    assert wr(s, TSC, 5000) is None and rd(s, TSC) == 5000 and rd(s, TSC_ADJUST) == 4000
    s.clock.advance_tsc(10)
    assert rd(s, TSC) == 5010
    assert wr(s, TSC_ADJUST, 0) is None and rd(s, TSC) == 1010
    assert wr(s, TSC, 0) is None and rd(s, TSC_ADJUST) == (-1010) % (1 << 64)


def test_tsc_deadline_and_adjust_are_gated_by_cpuid() -> None:
    s = state(tsc_deadline=False, tsc_adjust=False, mtrr=False, pat=False, aperfmperf=False)
    for index in (TSC_DEADLINE, TSC_ADJUST, MTRRCAP, MTRR_DEF_TYPE, 0x200, 0x250, PAT, 0xE7, 0xE8):
        assert rd(s, index) == "#GP" and wr(s, index, 0) == "#GP", hex(index)


def test_misc_enable() -> None:
    s = state()
    # fast strings (0), BTS unavailable (11), PEBS unavailable (12)
    assert rd(s, MISC_ENABLE) == 0x1801
    assert wr(s, MISC_ENABLE, 1 << 22) is None and rd(s, MISC_ENABLE) == 0x1800 | 1 << 22
    assert s.limit_cpuid_maxval
    assert wr(s, MISC_ENABLE, 1 << 2) == "#GP"  # reserved (no TCC/FPU fopcode bits modelled)


@pytest.mark.parametrize("bit", [0, 3, 16, 18, 22, 23, 34])
def test_misc_enable_writable_bits(bit: int) -> None:
    """SDM4 Table 2-2: fast strings, auto thermal, EIST, MONITOR FSM, limit CPUID, xTPR, XD disable are R/W
    (kvm-unit-tests x86/msr.c writes 0x400c50809 and reads it back, ignoring read-only bits 7, 11, 12)."""
    s = state()
    assert wr(s, MISC_ENABLE, 1 << bit) is None
    assert rd(s, MISC_ENABLE) & ~0x1880 == 1 << bit


def test_misc_enable_kvm_unit_tests_value() -> None:
    s = state()
    assert wr(s, MISC_ENABLE, 0x400C50809) is None
    assert rd(s, MISC_ENABLE) & ~0x1880 == 0x400C50809 & ~0x1880


@pytest.mark.parametrize("bit", [1, 2, 4, 5, 6, 8, 9, 10, 13, 14, 15, 17, 19, 20, 21, 24, 33, 35, 63])
def test_misc_enable_reserved_bits(bit: int) -> None:
    assert wr(state(), MISC_ENABLE, 1 << bit) == "#GP"


def test_pat_and_mtrrs() -> None:
    s = state()
    assert rd(s, PAT) == PAT_DEFAULT == 0x0007040600070406
    assert wr(s, PAT, 0x0000000000000002) == "#GP"  # type 2 reserved
    assert wr(s, PAT, 0x0706050400010706 & ~0xFF) is None
    assert rd(s, MTRRCAP) == 0x508  # WC, fixed, 8 variable
    assert wr(s, MTRR_DEF_TYPE, 0xC06) is None and rd(s, MTRR_DEF_TYPE) == 0xC06
    assert wr(s, MTRR_DEF_TYPE, 0x1000) == "#GP" and wr(s, MTRR_DEF_TYPE, 0x2) == "#GP"
    assert wr(s, 0x200, 0x80000006) is None and wr(s, 0x200, 0x80000003) == "#GP"  # PHYSBASE0 type 3
    assert wr(s, 0x201, 0xFF80000800) is None and wr(s, 0x201, 0x400) == "#GP"  # PHYSMASK0 bit 10
    assert wr(s, 0x250, 0x0606060606060606) is None and wr(s, 0x250, 0x07) == "#GP"  # fixed: no UC-


def test_read_only_identification() -> None:
    s = state()
    assert rd(s, FEATURE_CONTROL) == 1 and wr(s, FEATURE_CONTROL, 1) == "#GP"  # locked
    assert rd(s, MCG_CAP) == 0 and wr(s, MCG_CAP, 0) == "#GP"
    assert wr(s, MCG_STATUS, 0x8) == "#GP" and wr(s, MCG_STATUS, 0x7) is None and rd(s, MCG_STATUS) == 7
    assert rd(s, PLATFORM_INFO) == 20 << 8  # 2 GHz / 100 MHz
    assert rd(s, 0x8B) == 1 << 32 and wr(s, 0x8B, 0) is None and wr(s, 0x79, 0) is None


def test_unlisted_msrs_are_not_mine() -> None:
    s = state()
    for index in (0xC0000080, 0xC0000081, 0xC0000100, 0x174, 0x40000000, 0x800):
        assert ARCH_MSRS.rdmsr(s, index) is NOT_MINE and ARCH_MSRS.wrmsr(s, index, 0) is NOT_MINE


def test_reset_restores_power_up_values() -> None:
    s = state()
    wr(s, PAT, 0)
    wr(s, MISC_ENABLE, 0)
    wr(s, TSC, 1 << 40)
    wr(s, APIC_BASE, 0xFEE00D00)
    s.reset()
    assert (rd(s, PAT), rd(s, MISC_ENABLE), rd(s, TSC_ADJUST), rd(s, APIC_BASE)) == (
        PAT_DEFAULT, 0x1801, 0, 0xFEE00900)
