"""Remote TLB flush hypercalls 0x0002/0x0003/0x0013/0x0014 (TLFS §9 "Virtual MMU", HvCallFlushVirtualAddress*).

The model keeps no TLB: it asks the machine (``services.flush_tlb``) to invalidate the targets before
the call returns. AddressSpace (a CR3 value) is not tracked; every flush covers all address spaces of
the targets, a superset of what was asked (allowed: flushing more is never observable as wrong).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from viridian.abi.dispatch import HypercallCall, RepResult
from viridian.partition.gates import all_of, feature, recommendation
from viridian.partition.hypercalls import HV_CALLS
from viridian.tlfs.cpuid import Feature, Recommendation
from viridian.tlfs.hypercalls import FlushFlags, HvCall
from viridian.tlfs.inputs import (
    ALL_VPS,
    HV_INPUT_FLUSH_VIRTUAL_ADDRESS_SPACE,
    HV_INPUT_FLUSH_VIRTUAL_ADDRESS_SPACE_EX_HEADER,
    VpSet,
    VpSetError,
    parse_vp_set,
    vp_set_from_mask,
)
from viridian.tlfs.status import HvStatus

if TYPE_CHECKING:
    from viridian.partition.vp import VirtualProcessor

MASK64: Final = (1 << 64) - 1
PAGE: Final = 4096
# KVM queues at most 15 GVA ranges per flush request; more -> flush everything. We do the same with the
# call's RepCount, and also cap the expanded page list (an entry may name 4096 pages).
MAX_LIST_ENTRIES: Final = 15
MAX_LIST_PAGES: Final = 512
EXT_LARGE_PAGE: Final = 1 << 11  # extended GVA range: 11 LargePage, 12 PageSize (0 = 2 MB, 1 = 1 GB)

remote_flush = recommendation(Recommendation.REMOTE_FLUSH_HYPERCALL)
remote_flush_ex = all_of(remote_flush, recommendation(Recommendation.EX_PROCESSOR_MASKS))
extended_ranges = feature(Feature.EXTENDED_GVA_RANGES_FOR_FLUSH_VA_LIST)

_SPACE_FLAGS: Final = int(
    FlushFlags.ALL_PROCESSORS | FlushFlags.ALL_VIRTUAL_ADDRESS_SPACES | FlushFlags.NON_GLOBAL_MAPPINGS_ONLY
)
_LIST_FLAGS: Final = int(FlushFlags.ALL_PROCESSORS | FlushFlags.ALL_VIRTUAL_ADDRESS_SPACES)


def _check_flags(vp: VirtualProcessor, flags: int, *, list_call: bool) -> HvStatus | None:
    """TLFS: reserved flags -> INVALID_PARAMETER; NON_GLOBAL_MAPPINGS_ONLY is invalid for the *List
    calls; USE_EXTENDED_RANGE_FORMAT needs 0x40000003.EDX[14] (ignored by the *Space calls)."""
    valid = _LIST_FLAGS if list_call else _SPACE_FLAGS
    if extended_ranges(vp):
        valid |= int(FlushFlags.USE_EXTENDED_RANGE_FORMAT)
    return HvStatus.INVALID_PARAMETER if flags & ~valid & MASK64 else None


def _legacy_targets(vp: VirtualProcessor, flags: int, mask: int) -> VpSet:
    # KVM: ProcessorMask 0 without ALL_PROCESSORS also means every VP (WS2012 sends it); TLFS would
    # answer INVALID_PARAMETER.
    if flags & FlushFlags.ALL_PROCESSORS or mask == 0:
        return ALL_VPS
    return vp_set_from_mask(mask)


def _ex_header(call: HypercallCall) -> tuple[int, VpSet | HvStatus]:
    """(Flags, processor set) of the *Ex calls: HV_VP_SET.Format/ValidBanksMask in the fixed header,
    BankContents as the variable header (count != popcount -> INVALID_HYPERCALL_INPUT, KVM)."""
    head = HV_INPUT_FLUSH_VIRTUAL_ADDRESS_SPACE_EX_HEADER.parse(call.header)
    try:
        return head.flags, parse_vp_set(head.vp_set_format, head.valid_banks_mask, call.var_header)
    except VpSetError as err:
        return head.flags, err.status


def _flush(vp: VirtualProcessor, flags: int, vpset: VpSet, gvas: tuple[int, ...] | None) -> None:
    """Ask the machine to flush; ALL_PROCESSORS overrides the set. Nothing to do for an empty set."""
    if flags & FlushFlags.ALL_PROCESSORS:
        vpset = ALL_VPS
    targets = vpset.members(len(vp.partition.vps))
    if targets:
        vp.partition.services.flush_tlb(vp.index, targets, gvas)


def _expand(elements: list[bytes], extended: bool) -> tuple[int, ...] | None:
    """GVA page addresses named by GvaRange elements; None (flush everything) when the list is too
    long to expand cheaply or names a large page (TLFS §9 "HV_GVA_RANGE")."""
    pages: dict[int, None] = {}
    for raw in elements:
        value = int.from_bytes(raw, "little")
        if extended and value & EXT_LARGE_PAGE:
            return None  # a 2 MB / 1 GB page: flush everything rather than 512+ entries
        count = (value & (0x7FF if extended else 0xFFF)) + 1
        if len(pages) + count > MAX_LIST_PAGES:
            return None
        base = value & ~0xFFF & MASK64
        for i in range(count):
            gva = base + i * PAGE
            if gva > MASK64:
                break  # TLFS: GVAs beyond the GVA space are ignored
            pages[gva] = None
    return tuple(pages)


def _flush_list(
    vp: VirtualProcessor, call: HypercallCall, elements: list[bytes], flags: int, vpset: VpSet
) -> RepResult:
    extended = bool(flags & FlushFlags.USE_EXTENDED_RANGE_FORMAT)
    # KVM: more than 15 ranges -> flush the whole TLB of every target instead.
    gvas = None if call.control.rep_count > MAX_LIST_ENTRIES else _expand(elements, extended)
    _flush(vp, flags, vpset, gvas)
    return RepResult(HvStatus.SUCCESS, len(elements))


@HV_CALLS.simple(HvCall.FLUSH_VIRTUAL_ADDRESS_SPACE, input_size=24, gate=remote_flush,
                 cite="TLFS §9 HvCallFlushVirtualAddressSpace; KVM kvm_hv_flush_tlb")
def flush_virtual_address_space(vp: VirtualProcessor, call: HypercallCall) -> HvStatus:
    # TLFS HvCallFlushVirtualAddressSpace: {AddressSpace, Flags, ProcessorMask}; gate per KVM (R2).
    head = HV_INPUT_FLUSH_VIRTUAL_ADDRESS_SPACE.parse(call.header)
    if (bad := _check_flags(vp, head.flags, list_call=False)) is not None:
        return bad
    _flush(vp, head.flags, _legacy_targets(vp, head.flags, head.processor_mask), None)
    return HvStatus.SUCCESS


@HV_CALLS.rep(HvCall.FLUSH_VIRTUAL_ADDRESS_LIST, input_size=24, rep_input_size=8, gate=remote_flush,
              cite="TLFS §9 HvCallFlushVirtualAddressList; KVM kvm_hv_flush_tlb")
def flush_virtual_address_list(vp: VirtualProcessor, call: HypercallCall, elements: list[bytes]) -> RepResult:
    # TLFS HvCallFlushVirtualAddressList: same header, one GvaRange per rep.
    head = HV_INPUT_FLUSH_VIRTUAL_ADDRESS_SPACE.parse(call.header)
    if (bad := _check_flags(vp, head.flags, list_call=True)) is not None:
        return RepResult(bad, 0)
    return _flush_list(vp, call, elements, head.flags, _legacy_targets(vp, head.flags, head.processor_mask))


@HV_CALLS.simple(HvCall.FLUSH_VIRTUAL_ADDRESS_SPACE_EX, input_size=32, var_header=True, gate=remote_flush_ex,
                 cite="TLFS §9 HvCallFlushVirtualAddressSpaceEx; KVM kvm_hv_flush_tlb")
def flush_virtual_address_space_ex(vp: VirtualProcessor, call: HypercallCall) -> HvStatus:
    # TLFS HvCallFlushVirtualAddressSpaceEx: HV_VP_SET instead of a mask; gate per KVM (R2 + R11).
    flags, vpset = _ex_header(call)
    if isinstance(vpset, HvStatus):
        return vpset
    if (bad := _check_flags(vp, flags, list_call=False)) is not None:
        return bad
    _flush(vp, flags, vpset, None)
    return HvStatus.SUCCESS


@HV_CALLS.rep(HvCall.FLUSH_VIRTUAL_ADDRESS_LIST_EX, input_size=32, rep_input_size=8, var_header=True,
              gate=remote_flush_ex, cite="TLFS §9 HvCallFlushVirtualAddressListEx; KVM kvm_hv_flush_tlb")
def flush_virtual_address_list_ex(vp: VirtualProcessor, call: HypercallCall, elements: list[bytes]) -> RepResult:
    # TLFS HvCallFlushVirtualAddressListEx: HV_VP_SET header, GvaRange reps after the variable header.
    flags, vpset = _ex_header(call)
    if isinstance(vpset, HvStatus):
        return RepResult(vpset, 0)
    if (bad := _check_flags(vp, flags, list_call=True)) is not None:
        return RepResult(bad, 0)
    return _flush_list(vp, call, elements, flags, vpset)
