"""construct BitStructs of synthetic MSR values, hypercall control/result words and CPUID registers.

Every layout is the little-endian view of an integer register: ``ByteSwapped(BitStruct(...))`` with the fields
listed from the most significant bit down to bit 0 (construct's BitStruct is MSB-first over bytes).
Field names are snake_case; reserved fields carry their kind and bit range:
``rsvdz_HI_LO`` (guest must write 0), ``rsvdp_HI_LO`` (guest must preserve), ``rsvd_HI_LO`` (ignore on read).

Use :func:`unpack64` / :func:`pack64` to go between an ``int`` and a :class:`construct.Container`;
:func:`field_spans`, :func:`field_mask` and :func:`reserved_mask` give the bit positions.
"""

from __future__ import annotations

from enum import IntFlag
from typing import Any, Literal

from construct import BitsInteger, BitStruct, ByteSwapped, Container, Flag

from viridian.tlfs.cpuid import (
    CpuManagementFeature,
    CpuManagementPower,
    Feature,
    HardwareFeature,
    NestedFeature,
    NestedPrivilege,
    PartitionPrivilege,
    Recommendation,
)

__all__ = [
    "APIC_ASSIST",
    "CPUID_CPU_MANAGEMENT_EAX",
    "CPUID_CPU_MANAGEMENT_EBX",
    "CPUID_FEATURES_EAX",
    "CPUID_FEATURES_EBX",
    "CPUID_FEATURES_ECX",
    "CPUID_FEATURES_EDX",
    "CPUID_HARDWARE_FEATURES_EAX",
    "CPUID_NESTED_FEATURES_EAX",
    "CPUID_NESTED_FEATURES_EDX",
    "CPUID_NESTED_OPTIMIZATIONS_EAX",
    "CPUID_RECOMMENDATIONS_EAX",
    "CPUID_RECOMMENDATIONS_ECX",
    "CPUID_SVM_FEATURES_EAX",
    "CPUID_VERSION_EBX",
    "CPUID_VERSION_EDX",
    "CRASH_CTL",
    "EOI",
    "GUEST_OS_ID_OPEN_SOURCE",
    "GUEST_OS_ID_PROPRIETARY",
    "GVA_RANGE",
    "GVA_RANGE_EXTENDED",
    "GVA_RANGE_EXTENDED_LARGE",
    "HYPERCALL",
    "HYPERCALL_INPUT",
    "HYPERCALL_RESULT",
    "ICR",
    "INPUT_VTL",
    "MESSAGE_FLAGS",
    "OVERLAY_PAGE",
    "REENLIGHTENMENT_CONTROL",
    "REFERENCE_TSC",
    "RESET",
    "SCONTROL",
    "SIEFP",
    "SIMP",
    "SINT",
    "STIMER_CONFIG",
    "STIME_UNHALTED_TIMER_CONFIG",
    "TPR",
    "TSC_EMULATION_CONTROL",
    "TSC_EMULATION_STATUS",
    "TSC_INVARIANT_CONTROL",
    "VP_ASSIST_PAGE",
    "field_mask",
    "field_spans",
    "pack64",
    "reserved_mask",
    "unpack64",
]


def _register(*fields: Any) -> Any:
    """Little-endian integer register whose ``fields`` run from the top bit down to bit 0."""
    return ByteSwapped(BitStruct(*fields))


def _bits(name: str, width: int) -> Any:
    return name / BitsInteger(width)


def _flag(name: str) -> Any:
    return name / Flag


# --- Hypercall interface (TLFS hypercall-interface.md, 6.0b §3) --------------------------------------------

# HV_X64_MSR_HYPERCALL: TLFS hypercall-interface.md "Establishing the Hypercall Interface".
HYPERCALL = _register(
    _bits("gpfn", 52),
    _bits("rsvdp_11_2", 10),
    _flag("locked"),
    _flag("enable"),
)

# Hypercall input value (RCX): TLFS hypercall-interface.md "Hypercall Inputs" (VariableHeaderSize 26:17 per md/Linux).
HYPERCALL_INPUT = _register(
    _bits("rsvdz_63_60", 4),
    _bits("rep_start_index", 12),
    _bits("rsvdz_47_44", 4),
    _bits("rep_count", 12),
    _flag("is_nested"),
    _bits("rsvdz_30_27", 4),
    _bits("variable_header_size", 10),
    _flag("fast"),
    _bits("call_code", 16),
)

# Hypercall result value (RAX): TLFS hypercall-interface.md, hypercall result value.
HYPERCALL_RESULT = _register(
    _bits("rsvd_63_44", 20),
    _bits("reps_completed", 12),
    _bits("rsvd_31_16", 16),
    _bits("status", 16),
)

# HV_INPUT_VTL (one byte): TLFS datatypes/hv_input_vtl.md.
INPUT_VTL = _register(
    _bits("rsvdz_7_5", 3),
    _flag("use_target_vtl"),
    _bits("target_vtl", 4),
)

# HV_GVA_RANGE, simple format: TLFS hypercalls/HvCallFlushVirtualAddressList.md.
GVA_RANGE = _register(
    _bits("page_number", 52),
    _bits("additional_pages", 12),
)

# HV_GVA_RANGE_EXTENDED, LargePage=0 (flag HV_FLUSH_USE_EXTENDED_RANGE_FORMAT): TLFS 6.0b, HvFlushVirtualAddressList.
GVA_RANGE_EXTENDED = _register(
    _bits("page_number", 52),
    _flag("large_page"),
    _bits("additional_pages", 11),
)

# HV_GVA_RANGE_EXTENDED, LargePage=1: page_size 0 = 2 MB, 1 = 1 GB (TLFS 6.0b, HvFlushVirtualAddressList).
GVA_RANGE_EXTENDED_LARGE = _register(
    _bits("large_page_number", 43),
    _bits("rsvd_20_13", 8),
    _flag("page_size"),
    _flag("large_page"),
    _bits("additional_pages", 11),
)

# --- Partition MSRs ------------------------------------------------------------------------------------------

# HV_X64_MSR_GUEST_OS_ID, proprietary encoding (bit 63 = 0): TLFS hypercall-interface.md "Reporting the Guest OS Identity".
GUEST_OS_ID_PROPRIETARY = _register(
    _flag("open_source"),
    _bits("vendor", 15),
    _bits("os_id", 8),
    _bits("major", 8),
    _bits("minor", 8),
    _bits("service_version", 8),
    _bits("build", 16),
)

# HV_X64_MSR_GUEST_OS_ID, open-source encoding (bit 63 = 1): same TLFS section.
GUEST_OS_ID_OPEN_SOURCE = _register(
    _flag("open_source"),
    _bits("os_type", 7),
    _bits("os_id", 8),
    _bits("version", 32),
    _bits("build", 16),
)

# Generic overlay-page MSR (bit 0 Enable, 11:1 RsvdP, 63:12 GPFN): TLFS timers.md "Reference TSC Page",
# vp-properties.md "Virtual Processor Assist Page", "SIEFP Register" / "SIMP Register".
OVERLAY_PAGE = _register(
    _bits("gpfn", 52),
    _bits("rsvdp_11_1", 11),
    _flag("enable"),
)
REFERENCE_TSC = OVERLAY_PAGE
VP_ASSIST_PAGE = OVERLAY_PAGE
SIEFP = OVERLAY_PAGE
SIMP = OVERLAY_PAGE

# HV_X64_MSR_RESET: TLFS 6.0b App. C synthetic MSR table.
RESET = _register(
    _bits("rsvdz_63_1", 63),
    _flag("reset"),
)

# HV_X64_MSR_CRASH_CTL: TLFS datatypes/hv_crash_ctl_reg_contents.md (61 / 60:58 from the newer md only).
CRASH_CTL = _register(
    _flag("crash_notify"),
    _flag("crash_message"),
    _flag("no_crash_dump"),
    _bits("pre_os_id", 3),
    _bits("rsvd_57_0", 58),
)

# HV_X64_MSR_REENLIGHTENMENT_CONTROL: TLFS 6.0b reenlightenment MSRs (same layout in Linux hvgdk_mini.h).
REENLIGHTENMENT_CONTROL = _register(
    _bits("target_vp", 32),
    _bits("rsvdz_31_17", 15),
    _flag("enabled"),
    _bits("rsvdz_15_8", 8),
    _bits("vector", 8),
)

# HV_X64_MSR_TSC_EMULATION_CONTROL / _STATUS: TLFS 6.0b reenlightenment MSRs.
TSC_EMULATION_CONTROL = _register(_bits("rsvdz_63_1", 63), _flag("enabled"))
TSC_EMULATION_STATUS = _register(_bits("rsvdz_63_1", 63), _flag("in_progress"))

# HV_X64_MSR_TSC_INVARIANT_CONTROL: Linux hyperv-tlfs.h HV_EXPOSE_INVARIANT_TSC (KVM: bit 0 only, sticky).
TSC_INVARIANT_CONTROL = _register(_bits("rsvdz_63_1", 63), _flag("expose_invariant_tsc"))

# --- Per-VP MSRs ---------------------------------------------------------------------------------------------

# HV_X64_MSR_EOI / ICR / TPR: TLFS virtual-interrupts.md "Synthetic APIC MSRs" (APIC EOI 0xB0, ICR 0x310:0x300,
# TPR 0x80).
EOI = _register(_bits("rsvdz_63_32", 32), _bits("eoi", 32))
ICR = _register(_bits("icr_high", 32), _bits("icr_low", 32))
TPR = _register(_bits("rsvdz_63_8", 56), _bits("tpr", 8))

# HV_X64_MSR_SCONTROL: TLFS "SynIC MSRs", SCONTROL Register.
SCONTROL = _register(
    _bits("rsvdp_63_1", 63),
    _flag("enable"),
)

# HV_X64_MSR_SINTx: TLFS "SynIC MSRs", SINTx Registers (Polling bit 18 needs CPUID 0x40000003.EDX[17]).
SINT = _register(
    _bits("rsvdp_63_19", 45),
    _flag("polling"),
    _flag("auto_eoi"),
    _flag("masked"),
    _bits("rsvdp_15_8", 8),
    _bits("vector", 8),
)

# HV_X64_MSR_STIMERx_CONFIG: TLFS timers.md "Synthetic Timer Configuration Register".
STIMER_CONFIG = _register(
    _bits("rsvdz_63_20", 44),
    _bits("sintx", 4),
    _bits("rsvdz_15_13", 3),
    _flag("direct_mode"),
    _bits("apic_vector", 8),
    _flag("auto_enable"),
    _flag("lazy"),
    _flag("periodic"),
    _flag("enable"),
)

# HV_X64_MSR_STIME_UNHALTED_TIMER_CONFIG: TLFS timers.md "Synthetic time-unhalted timer".
STIME_UNHALTED_TIMER_CONFIG = _register(
    _bits("rsvdz_63_9", 55),
    _flag("enabled"),
    _bits("vector", 8),
)

# HV_VIRTUAL_APIC_ASSIST (u32 at offset 0 of the VP assist page): TLFS virtual-interrupts.md "EOI Assist".
APIC_ASSIST = _register(
    _bits("rsvdz_31_1", 31),
    _flag("no_eoi_required"),
)

# HV_MESSAGE_FLAGS (u8 at offset 5 of HV_MESSAGE): TLFS datatypes/hv_message.md.
MESSAGE_FLAGS = _register(
    _bits("rsvd_7_1", 7),
    _flag("message_pending"),
)


# --- CPUID registers, generated from the IntFlags in viridian.tlfs.cpuid (TLFS feature-discovery.md) ---------


def _flag_register(flags: type[IntFlag], shift: int, width: int = 32) -> Any:
    """A register whose set bits are the single-bit members of ``flags`` lying in [shift, shift + width).

    Field names are the member names lower-cased; bits no member claims become ``rsvd_HI_LO`` runs.
    """
    by_bit: dict[int, str] = {}
    for name, member in flags.__members__.items():
        value = int(member)
        if value and value & (value - 1) == 0 and shift <= value.bit_length() - 1 < shift + width:
            by_bit.setdefault(value.bit_length() - 1 - shift, name.lower())
    fields: list[Any] = []
    bit = width - 1
    while bit >= 0:
        if bit in by_bit:
            fields.append(_flag(by_bit[bit]))
            bit -= 1
            continue
        low = bit
        while low - 1 >= 0 and low - 1 not in by_bit:
            low -= 1
        fields.append(_bits(f"rsvd_{bit}_{low}" if bit != low else f"rsvd_{bit}", bit - low + 1))
        bit = low - 1
    return _register(*fields)


# 0x40000003.EAX / EBX = HV_PARTITION_PRIVILEGE_MASK[31:0] / [63:32]: TLFS feature-discovery.md.
CPUID_FEATURES_EAX = _flag_register(PartitionPrivilege, 0)
CPUID_FEATURES_EBX = _flag_register(PartitionPrivilege, 32)
# 0x40000003.EDX miscellaneous features: TLFS feature-discovery.md.
CPUID_FEATURES_EDX = _flag_register(Feature, 0)
# 0x40000004.EAX implementation recommendations: TLFS feature-discovery.md.
CPUID_RECOMMENDATIONS_EAX = _flag_register(Recommendation, 0)
# 0x40000006.EAX hardware features in use; 0x40000007 root CPU management; 0x40000009 nested features.
CPUID_HARDWARE_FEATURES_EAX = _flag_register(HardwareFeature, 0)
CPUID_CPU_MANAGEMENT_EAX = _flag_register(CpuManagementFeature, 0)
CPUID_CPU_MANAGEMENT_EBX = _flag_register(CpuManagementPower, 0)
CPUID_NESTED_FEATURES_EAX = _flag_register(NestedPrivilege, 0)
CPUID_NESTED_FEATURES_EDX = _flag_register(NestedFeature, 0)

# 0x40000002 hypervisor version: TLFS feature-discovery.md "Hypervisor System Identity" (EAX build, ECX SP).
CPUID_VERSION_EBX = _register(_bits("major", 16), _bits("minor", 16))
CPUID_VERSION_EDX = _register(_bits("service_branch", 8), _bits("service_number", 24))

# 0x40000003.ECX: TLFS md power/misc bits; [3:0] = max processor power state C0..C3 (Win7-era WDK ff542428).
CPUID_FEATURES_ECX = _register(
    _bits("rsvd_31_11", 21),
    _flag("vp_ghcb_root_mapping"),
    _flag("vp_dispatch_interrupt_injection"),
    _flag("exception_trap_intercept"),
    _flag("architectural_pmu"),
    _flag("supervisor_shadow_stack"),
    _flag("invariant_mperf"),
    _bits("rsvd_4", 1),
    _bits("max_power_state", 4),
)

# 0x40000004.ECX: TLFS feature-discovery.md, ImplementedPhysicalAddressBits (0 = not reported).
CPUID_RECOMMENDATIONS_ECX = _register(_bits("rsvd_31_7", 25), _bits("implemented_physical_address_bits", 7))

# 0x40000008.EAX: TLFS 6.0b HV_HYPERVISOR_SVM_FEATURES.
CPUID_SVM_FEATURES_EAX = _register(
    _bits("max_pasid_space_pasid_count", 21),
    _bits("rsvd_10_1", 10),
    _flag("svm_supported"),
)

# 0x4000000A.EAX: TLFS feature-discovery.md "Hypervisor Nested Virtualization Features" (bit 20 per
# Mile.HyperV.TLFS HV_HYPERVISOR_NESTED_VIRTUALIZATION_FEATURES).
CPUID_NESTED_OPTIMIZATIONS_EAX = _register(
    _bits("rsvd_31_21", 11),
    _flag("virtualization_exception"),
    _flag("enlightened_msr_bitmap"),
    _flag("flush_guest_physical"),
    _flag("direct_virtual_flush"),
    _bits("rsvd_16", 1),
    _bits("evmcs_version_high", 8),
    _bits("evmcs_version_low", 8),
)


# --- helpers -------------------------------------------------------------------------------------------------


def _fields(layout: Any) -> list[Any]:
    """The Renamed subcons of a ``_register`` layout, most significant first."""
    return list(layout.subcon.subcon.subcons)


def _width(layout: Any) -> int:
    return int(layout.sizeof()) * 8


def field_spans(layout: Any) -> dict[str, tuple[int, int]]:
    """``{field name: (lowest bit, width)}`` of a register layout."""
    spans: dict[str, tuple[int, int]] = {}
    top = _width(layout)
    for sub in _fields(layout):
        width = int(sub.sizeof())
        top -= width
        spans[sub.name] = (top, width)
    return spans


def field_mask(layout: Any, name: str) -> int:
    """Mask of field ``name`` in the integer register value."""
    low, width = field_spans(layout)[name]
    return ((1 << width) - 1) << low


def reserved_mask(layout: Any, kind: Literal["rsvdz", "rsvdp", "rsvd", "any"] = "any") -> int:
    """Mask of the reserved fields of one kind (``any`` = all three kinds)."""
    prefixes = ("rsvdz_", "rsvdp_", "rsvd_") if kind == "any" else (f"{kind}_",)
    mask = 0
    for name in field_spans(layout):
        if name.startswith(prefixes):
            mask |= field_mask(layout, name)
    return mask


def unpack64(layout: Any, value: int) -> Container:
    """Decode an integer register ``value`` (0 <= value < 2**bits) into a Container of the layout's fields.

    Despite the name this works for every register layout here (8, 32 or 64 bits). Raises ValueError if the
    value does not fit.
    """
    width = _width(layout)
    if not 0 <= value < (1 << width):
        raise ValueError(f"value {value:#x} does not fit in {width} bits")
    parsed = layout.parse(value.to_bytes(width // 8, "little"))
    return Container((k, v) for k, v in parsed.items() if not k.startswith("_"))


def pack64(layout: Any, **fields: int | bool) -> int:
    """Encode ``fields`` into the integer register value; missing fields are 0.

    Raises ValueError for an unknown field name or a value that does not fit its field.
    """
    spans = field_spans(layout)
    unknown = set(fields) - set(spans)
    if unknown:
        raise ValueError(f"unknown field(s) {sorted(unknown)}; layout has {list(spans)}")
    values: dict[str, int | bool] = {}
    for name, (_low, width) in spans.items():
        raw = fields.get(name, 0)
        number = int(raw)
        if not 0 <= number < (1 << width):
            raise ValueError(f"field {name}={raw!r} does not fit in {width} bit(s)")
        values[name] = number
    return int.from_bytes(layout.build(values), "little")
