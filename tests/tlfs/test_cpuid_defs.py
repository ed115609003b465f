"""CPUID leaves 0x40000002-0x4000000A and the APIC/TSC MSR layouts, against bit numbers copied by hand from
TLFS feature-discovery.md, TLFS 6.0b (HV_HYPERVISOR_*_FEATURES as transcribed in Mile.HyperV.TLFS.h) and
virtual-interrupts.md -- never computed from the code under test."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from viridian.tlfs import cpuid
from viridian.tlfs import layouts as L

NEW_32 = [
    L.CPUID_VERSION_EBX, L.CPUID_VERSION_EDX, L.CPUID_FEATURES_ECX, L.CPUID_RECOMMENDATIONS_ECX,
    L.CPUID_HARDWARE_FEATURES_EAX, L.CPUID_CPU_MANAGEMENT_EAX, L.CPUID_CPU_MANAGEMENT_EBX,
    L.CPUID_SVM_FEATURES_EAX, L.CPUID_NESTED_FEATURES_EAX, L.CPUID_NESTED_FEATURES_EDX,
    L.CPUID_NESTED_OPTIMIZATIONS_EAX,
]
NEW_64 = [L.EOI, L.ICR, L.TPR, L.TSC_INVARIANT_CONTROL]


@pytest.mark.parametrize("layout", NEW_32 + NEW_64)
def test_fields_tile_the_register(layout: Any) -> None:
    covered = 0
    for low, width in L.field_spans(layout).values():
        mask = ((1 << width) - 1) << low
        assert covered & mask == 0
        covered |= mask
    assert covered == (1 << (8 * layout.sizeof())) - 1
    assert layout.sizeof() == (4 if layout in NEW_32 else 8)


@given(st.sampled_from(NEW_32 + NEW_64), st.data())
def test_round_trip(layout: Any, data: st.DataObject) -> None:
    value = data.draw(st.integers(0, (1 << (8 * layout.sizeof())) - 1))
    assert L.pack64(layout, **L.unpack64(layout, value)) == value


def test_version_leaf() -> None:
    # 0x40000002: EBX 31:16 major, 15:0 minor; EDX 31:24 service branch, 23:0 service number.
    assert L.pack64(L.CPUID_VERSION_EBX, major=10, minor=0) == 0x000A0000
    v = L.unpack64(L.CPUID_VERSION_EDX, 0x03234567)
    assert (v.service_branch, v.service_number) == (3, 0x234567)


def test_features_ecx_power_state_and_flags() -> None:
    # Win7-era [3:0] max power state (C3 = 3); md bit 5 InvariantMperf ... bit 10 VpGhcbRootMapping.
    c = L.unpack64(L.CPUID_FEATURES_ECX, 0x3 | 1 << 5 | 1 << 10)
    assert (c.max_power_state, c.invariant_mperf, c.vp_ghcb_root_mapping) == (3, True, True)
    assert L.pack64(L.CPUID_FEATURES_ECX, architectural_pmu=1) == 0x80


def test_recommendations() -> None:
    assert cpuid.IMPLEMENTED_PA_BITS_MASK == 0x7F  # ECX[6:0]
    assert L.pack64(L.CPUID_RECOMMENDATIONS_ECX, implemented_physical_address_bits=48) == 48
    assert int(cpuid.Recommendation.CORE_SCHEDULER_REQUESTED) == 1 << 16
    assert int(cpuid.Recommendation.NO_NONARCHITECTURAL_CORE_SHARING) == 1 << 18


def test_hardware_features() -> None:
    # 0x40000006.EAX: 0 APIC overlay assist, 1 MSR bitmaps, 3 SLAT, 9 synthetic timers volatile.
    assert L.pack64(L.CPUID_HARDWARE_FEATURES_EAX, apic_overlay_assist=1, msr_bitmaps=1,
                    second_level_address_translation=1) == 0xB
    assert L.unpack64(L.CPUID_HARDWARE_FEATURES_EAX, 1 << 9).synthetic_timers_volatile is True


def test_cpu_management_and_svm() -> None:
    # 0x40000007: EAX 0 StartLogicalProcessor, 1 CreateRootVirtualProcessor, 2 PerformanceCounterSync,
    # 31 ReservedIdentityBit; EBX 0 ProcessorPowerManagement, 1 MwaitIdleStates, 2 LogicalProcessorIdling.
    assert L.pack64(L.CPUID_CPU_MANAGEMENT_EAX, start_logical_processor=1, reserved_identity_bit=1) == 0x80000001
    assert L.pack64(L.CPUID_CPU_MANAGEMENT_EBX, mwait_idle_states=1, logical_processor_idling=1) == 0x6
    assert cpuid.CPU_MANAGEMENT_REMAP_GUEST_UNCACHED == 1
    # 0x40000008.EAX: bit 0 SvmSupported, 31:11 MaxPasidSpacePasidCount.
    s = L.unpack64(L.CPUID_SVM_FEATURES_EAX, (0x1234 << 11) | 1)
    assert (s.svm_supported, s.max_pasid_space_pasid_count) == (True, 0x1234)
    assert cpuid.SVM_MAX_PASID_COUNT_MASK == 0xFFFFF800


def test_nested_features() -> None:
    # 0x40000009: EAX 2 AccessSynicRegs, 4 AccessIntrCtrlRegs, 5 AccessHypercallMsrs, 6 AccessVpIndex,
    # 12 AccessReenlightenmentControls; EDX 4 XMM fast input, 15 fast output, 17 SINT polling.
    assert L.pack64(L.CPUID_NESTED_FEATURES_EAX, access_synic_regs=1, access_intr_ctrl_regs=1,
                    access_hypercall_msrs=1, access_vp_index=1, access_reenlightenment_controls=1) == 0x1074
    assert L.pack64(L.CPUID_NESTED_FEATURES_EDX, xmm_registers_for_fast_hypercall=1, fast_hypercall_output=1,
                    sint_polling_mode=1) == 0x28010


def test_nested_optimizations() -> None:
    # 0x4000000A.EAX: 7:0 / 15:8 eVMCS version low/high, 17 direct flush, 18 GPA flush, 19 MSR bitmap, 20 #VE.
    n = L.unpack64(L.CPUID_NESTED_OPTIMIZATIONS_EAX, 0xA0101)
    assert (n.evmcs_version_low, n.evmcs_version_high, n.direct_virtual_flush, n.enlightened_msr_bitmap) == (
        1, 1, True, True)
    assert n.flush_guest_physical is False and n.virtualization_exception is False
    assert cpuid.EVMCS_VERSION & cpuid.EVMCS_VERSION_LOW_MASK == 1
    assert cpuid.EVMCS_VERSION & cpuid.EVMCS_VERSION_HIGH_MASK == 0x100
    assert int(cpuid.NestedOptimization.VIRTUALIZATION_EXCEPTION) == 1 << 20


def test_apic_and_tsc_invariant_msrs() -> None:
    # EOI 31:0 (63:32 RsvdZ); ICR 63:32 = APIC 0x310, 31:0 = APIC 0x300; TPR 7:0 (63:8 RsvdZ).
    assert L.reserved_mask(L.EOI) == 0xFFFFFFFF00000000
    i = L.unpack64(L.ICR, 0x0000000300004041)
    assert (i.icr_high, i.icr_low) == (3, 0x4041)
    assert L.reserved_mask(L.TPR) == (1 << 64) - 0x100
    assert L.pack64(L.TSC_INVARIANT_CONTROL, expose_invariant_tsc=1) == 1
