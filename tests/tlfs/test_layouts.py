"""Register layouts against values computed by hand from the TLFS bit tables (not from the layouts)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from viridian.tlfs import cpuid, hypercalls, msrs
from viridian.tlfs import layouts as L

U64 = st.integers(min_value=0, max_value=(1 << 64) - 1)

REGISTERS_64 = [
    L.HYPERCALL,
    L.HYPERCALL_INPUT,
    L.HYPERCALL_RESULT,
    L.GVA_RANGE,
    L.GVA_RANGE_EXTENDED,
    L.GVA_RANGE_EXTENDED_LARGE,
    L.GUEST_OS_ID_PROPRIETARY,
    L.GUEST_OS_ID_OPEN_SOURCE,
    L.OVERLAY_PAGE,
    L.RESET,
    L.CRASH_CTL,
    L.REENLIGHTENMENT_CONTROL,
    L.TSC_EMULATION_CONTROL,
    L.TSC_EMULATION_STATUS,
    L.SCONTROL,
    L.SINT,
    L.STIMER_CONFIG,
    L.STIME_UNHALTED_TIMER_CONFIG,
]
REGISTERS_32 = [
    L.APIC_ASSIST,
    L.CPUID_FEATURES_EAX,
    L.CPUID_FEATURES_EBX,
    L.CPUID_FEATURES_EDX,
    L.CPUID_RECOMMENDATIONS_EAX,
]
REGISTERS_8 = [L.INPUT_VTL, L.MESSAGE_FLAGS]
ALL_REGISTERS = REGISTERS_64 + REGISTERS_32 + REGISTERS_8


def test_sizes() -> None:
    assert [r.sizeof() for r in REGISTERS_64] == [8] * len(REGISTERS_64)
    assert [r.sizeof() for r in REGISTERS_32] == [4] * len(REGISTERS_32)
    assert [r.sizeof() for r in REGISTERS_8] == [1] * len(REGISTERS_8)


@pytest.mark.parametrize("layout", ALL_REGISTERS)
def test_fields_tile_the_register(layout: Any) -> None:
    spans = L.field_spans(layout)
    covered = 0
    for low, width in spans.values():
        mask = ((1 << width) - 1) << low
        assert covered & mask == 0
        covered |= mask
    assert covered == (1 << (8 * layout.sizeof())) - 1


def test_overlay_page_msrs_share_one_layout() -> None:
    assert L.REFERENCE_TSC is L.VP_ASSIST_PAGE is L.SIEFP is L.SIMP is L.OVERLAY_PAGE


def test_hypercall_msr() -> None:
    # GPFN 0x12345, Locked, Enable -> 0x12345003; little-endian bytes 03 50 34 12 00 00 00 00.
    value = L.pack64(L.HYPERCALL, gpfn=0x12345, locked=1, enable=1)
    assert value == 0x12345003
    assert value.to_bytes(8, "little") == bytes.fromhex("0350341200000000")
    f = L.unpack64(L.HYPERCALL, 0xFFFFFFFFFFFFF002)
    assert (f.gpfn, f.rsvdp_11_2, f.locked, f.enable) == ((1 << 52) - 1, 0, True, False)
    assert L.reserved_mask(L.HYPERCALL) == 0xFFC


def test_overlay_page() -> None:
    f = L.unpack64(L.OVERLAY_PAGE, 0x0000000123456FFF)
    assert (f.gpfn, f.rsvdp_11_1, f.enable) == (0x123456, 0x7FF, True)
    assert L.field_mask(L.OVERLAY_PAGE, "gpfn") == 0xFFFFFFFFFFFFF000


def test_sint() -> None:
    reset = L.unpack64(L.SINT, 0x0000000000010000)  # SINT initial value: masked, vector 0
    assert (reset.masked, reset.vector, reset.auto_eoi, reset.polling) == (True, 0, False, False)
    assert L.pack64(L.SINT, vector=0x30, auto_eoi=True) == 0x20030
    assert L.pack64(L.SINT, vector=0xFF, polling=True) == 0x400FF
    assert L.reserved_mask(L.SINT, "rsvdp") == 0xFFFFFFFFFFF8FF00
    assert L.field_mask(L.SINT, "masked") == msrs.SINT_MASKED
    assert L.field_mask(L.SINT, "auto_eoi") == msrs.SINT_AUTO_EOI
    assert L.field_mask(L.SINT, "polling") == msrs.SINT_POLLING


def test_scontrol_and_reset() -> None:
    assert L.unpack64(L.SCONTROL, 1).enable is True
    assert L.reserved_mask(L.SCONTROL, "rsvdp") == 0xFFFFFFFFFFFFFFFE
    assert L.unpack64(L.RESET, 1).reset is True


def test_stimer_config() -> None:
    # Enable | Periodic | ApicVector 0x40 | DirectMode = 0x1 | 0x2 | 0x400 | 0x1000
    assert L.pack64(L.STIMER_CONFIG, enable=1, periodic=1, apic_vector=0x40, direct_mode=1) == 0x1403
    # Enable | AutoEnable | SINTx 2 = 0x1 | 0x8 | 0x20000
    f = L.unpack64(L.STIMER_CONFIG, 0x20009)
    assert (f.enable, f.auto_enable, f.sintx, f.lazy, f.periodic) == (True, True, 2, False, False)
    assert L.unpack64(L.STIMER_CONFIG, 0x4).lazy is True
    assert L.reserved_mask(L.STIMER_CONFIG, "rsvdz") == 0xFFFFFFFFFFF0E000 == msrs.STIMER_CONFIG_RESERVED
    assert L.field_mask(L.STIMER_CONFIG, "apic_vector") == msrs.STIMER_APIC_VECTOR_MASK
    assert L.field_mask(L.STIMER_CONFIG, "sintx") == msrs.STIMER_SINTX_MASK


def test_crash_reenlightenment_unhalted_apic_assist() -> None:
    assert L.pack64(L.CRASH_CTL, crash_notify=1, crash_message=1) == 0xC000000000000000
    assert L.unpack64(L.CRASH_CTL, 1 << 61).no_crash_dump is True
    assert L.unpack64(L.CRASH_CTL, 0x7 << 58).pre_os_id == 7
    # Vector 0x40, Enabled (bit 16), TargetVp 3 (63:32)
    assert L.pack64(L.REENLIGHTENMENT_CONTROL, vector=0x40, enabled=1, target_vp=3) == 0x0000000300010040
    assert L.pack64(L.STIME_UNHALTED_TIMER_CONFIG, vector=2, enabled=1) == 0x102
    assert L.unpack64(L.APIC_ASSIST, 1).no_eoi_required is True
    assert L.reserved_mask(L.APIC_ASSIST) == 0xFFFFFFFE
    assert L.unpack64(L.TSC_EMULATION_STATUS, 1).in_progress is True


def test_hypercall_input_value() -> None:
    # code 0x14, VariableHeaderSize 2 (<<17), RepCount 3 (<<32), RepStartIndex 1 (<<48)
    value = 0x0001000300040014
    f = L.unpack64(L.HYPERCALL_INPUT, value)
    assert (f.call_code, f.fast, f.variable_header_size, f.is_nested) == (0x14, False, 2, False)
    assert (f.rep_count, f.rep_start_index) == (3, 1)
    assert (
        L.pack64(L.HYPERCALL_INPUT, call_code=0x14, variable_header_size=2, rep_count=3, rep_start_index=1)
        == value
    )
    assert L.pack64(L.HYPERCALL_INPUT, call_code=0x5C, fast=1) == 0x1005C
    assert L.pack64(L.HYPERCALL_INPUT, is_nested=1) == 0x80000000
    assert L.pack64(L.HYPERCALL_INPUT, rep_count=0xFFF) == 0x00000FFF00000000
    assert L.reserved_mask(L.HYPERCALL_INPUT) == 0xF000F00078000000 == hypercalls.CONTROL_RESERVED_MASK
    assert L.field_mask(L.HYPERCALL_INPUT, "variable_header_size") == hypercalls.CONTROL_VARHEAD_MASK
    assert L.field_mask(L.HYPERCALL_INPUT, "rep_count") == hypercalls.CONTROL_REP_COUNT_MASK
    assert L.field_mask(L.HYPERCALL_INPUT, "rep_start_index") == hypercalls.CONTROL_REP_START_MASK


def test_hypercall_result_value() -> None:
    # INVALID_HYPERCALL_INPUT (3) with 5 reps completed
    assert L.pack64(L.HYPERCALL_RESULT, status=3, reps_completed=5) == 0x0000000500000003
    f = L.unpack64(L.HYPERCALL_RESULT, 0xFFFFFFFFFFFFFFFF)
    assert (f.status, f.rsvd_31_16, f.reps_completed, f.rsvd_63_44) == (0xFFFF, 0xFFFF, 0xFFF, 0xFFFFF)
    assert L.field_mask(L.HYPERCALL_RESULT, "reps_completed") == hypercalls.RESULT_REPS_COMPLETED_MASK


def test_input_vtl() -> None:
    f = L.unpack64(L.INPUT_VTL, 0x11)  # TargetVtl 1, UseTargetVtl
    assert (f.target_vtl, f.use_target_vtl, f.rsvdz_7_5) == (1, True, 0)
    assert L.reserved_mask(L.INPUT_VTL) == 0xE0


def test_message_flags() -> None:
    assert L.unpack64(L.MESSAGE_FLAGS, hypercalls.HV_MESSAGE_FLAG_PENDING).message_pending is True


def test_gva_ranges() -> None:
    f = L.unpack64(L.GVA_RANGE, 0x00007FFF12345003)  # page 0x7FFF12345, 3 additional pages
    assert (f.page_number, f.additional_pages) == (0x7FFF12345, 3)
    g = L.unpack64(L.GVA_RANGE_EXTENDED, 0x0000000000ABC805)  # bit 11 clear: 4 KB pages
    assert (g.page_number, g.large_page, g.additional_pages) == (0xABC, True, 5)
    # LargePage (11) + PageSize 1 GB (12) + large page number 7 (63:21) + 1 additional page
    value = (7 << 21) | (1 << 12) | (1 << 11) | 1
    h = L.unpack64(L.GVA_RANGE_EXTENDED_LARGE, value)
    assert (h.large_page_number, h.page_size, h.large_page, h.additional_pages, h.rsvd_20_13) == (
        7,
        True,
        True,
        1,
        0,
    )


def test_guest_os_id_layouts() -> None:
    f = L.unpack64(L.GUEST_OS_ID_PROPRIETARY, 0x0001040601001DB0)
    assert (f.open_source, f.vendor, f.os_id, f.major, f.minor, f.service_version, f.build) == (
        False,
        1,
        4,
        6,
        1,
        0,
        7600,
    )
    g = L.unpack64(L.GUEST_OS_ID_OPEN_SOURCE, 0x8100000601000000)
    assert (g.open_source, g.os_type, g.os_id, g.version, g.build) == (True, 1, 0, 0x060100, 0)


def test_cpuid_registers_by_hand() -> None:
    # 0x40000003.EAX bit 5 AccessHypercallMsrs, bit 6 AccessVpIndex (minimum for Windows guests)
    assert L.pack64(L.CPUID_FEATURES_EAX, access_hypercall_msrs=1, access_vp_index=1) == 0x60
    assert L.unpack64(L.CPUID_FEATURES_EAX, 1 << 9).access_partition_reference_tsc is True
    # 0x40000003.EBX bit 4 PostMessages, bit 5 SignalEvents, bit 20 EnableExtendedHypercalls
    assert (
        L.pack64(L.CPUID_FEATURES_EBX, post_messages=1, signal_events=1, enable_extended_hypercalls=1)
        == 0x100030
    )
    # 0x40000003.EDX bit 18 HypercallMsrLock, bit 19 DirectSyntheticTimers, bit 10 GuestCrashRegs
    assert L.pack64(L.CPUID_FEATURES_EDX, hypercall_msr_lock=1, direct_synthetic_timers=1) == 0xC0000
    assert L.unpack64(L.CPUID_FEATURES_EDX, 1 << 10).guest_crash_regs is True
    # 0x40000004.EAX bit 5 RelaxedTiming, bit 11 UseExProcessorMasks
    assert L.pack64(L.CPUID_RECOMMENDATIONS_EAX, relaxed_timing=1, ex_processor_masks=1) == 0x820


@pytest.mark.parametrize(
    ("layout", "flags", "shift"),
    [
        (L.CPUID_FEATURES_EAX, cpuid.PartitionPrivilege, 0),
        (L.CPUID_FEATURES_EBX, cpuid.PartitionPrivilege, 32),
        (L.CPUID_FEATURES_EDX, cpuid.Feature, 0),
        (L.CPUID_RECOMMENDATIONS_EAX, cpuid.Recommendation, 0),
    ],
)
def test_cpuid_registers_match_intflags(layout: Any, flags: Any, shift: int) -> None:
    spans = L.field_spans(layout)
    for name, member in flags.__members__.items():
        bit = int(member).bit_length() - 1
        if shift <= bit < shift + 32:
            assert spans[name.lower()] == (bit - shift, 1), name
    for name, (_low, width) in spans.items():
        assert name.startswith("rsvd_") or width == 1


def test_pack_unpack_errors() -> None:
    with pytest.raises(ValueError, match="unknown field"):
        L.pack64(L.SINT, vectr=0x30)
    with pytest.raises(ValueError, match="does not fit"):
        L.pack64(L.SINT, vector=0x100)
    with pytest.raises(ValueError, match="does not fit"):
        L.pack64(L.SINT, masked=2)
    with pytest.raises(ValueError, match="does not fit"):
        L.pack64(L.SINT, vector=-1)
    with pytest.raises(ValueError):
        L.unpack64(L.SINT, 1 << 64)
    with pytest.raises(ValueError):
        L.unpack64(L.APIC_ASSIST, 1 << 32)
    with pytest.raises(ValueError):
        L.unpack64(L.SINT, -1)


def test_unpack_has_only_fields() -> None:
    assert list(L.unpack64(L.SCONTROL, 0)) == ["rsvdp_63_1", "enable"]


@given(U64)
def test_control_word_round_trip(value: int) -> None:
    f = L.unpack64(L.HYPERCALL_INPUT, value)
    assert L.pack64(L.HYPERCALL_INPUT, **f) == value
    assert f.call_code == value & hypercalls.CONTROL_CODE_MASK
    assert f.fast == bool(value & hypercalls.CONTROL_FAST)
    assert f.is_nested == bool(value & hypercalls.CONTROL_NESTED)
    assert f.variable_header_size == (value >> 17) & 0x3FF
    assert f.rep_count == (value >> 32) & 0xFFF
    assert f.rep_start_index == (value >> 48) & 0xFFF
    reserved = f.rsvdz_30_27 | f.rsvdz_47_44 | f.rsvdz_63_60
    assert bool(reserved) == bool(value & hypercalls.CONTROL_RESERVED_MASK)


@given(
    st.integers(0, 0xFFFF),
    st.booleans(),
    st.integers(0, 0x3FF),
    st.booleans(),
    st.integers(0, 0xFFF),
    st.integers(0, 0xFFF),
)
def test_control_word_fields_round_trip(
    code: int, fast: bool, varhead: int, nested: bool, reps: int, start: int
) -> None:
    value = L.pack64(
        L.HYPERCALL_INPUT,
        call_code=code,
        fast=fast,
        variable_header_size=varhead,
        is_nested=nested,
        rep_count=reps,
        rep_start_index=start,
    )
    assert value == code | fast << 16 | varhead << 17 | nested << 31 | reps << 32 | start << 48
    assert value & hypercalls.CONTROL_RESERVED_MASK == 0


@given(st.sampled_from(ALL_REGISTERS), st.data())
def test_every_layout_round_trips(layout: Any, data: st.DataObject) -> None:
    value = data.draw(st.integers(0, (1 << (8 * layout.sizeof())) - 1))
    assert L.pack64(layout, **L.unpack64(layout, value)) == value
