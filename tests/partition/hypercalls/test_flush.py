"""HvCallFlushVirtualAddressSpace/List and their Ex forms through the real partition and dispatcher."""

from __future__ import annotations

import time

import pytest
from hc_harness import CONVS, MODE_IDS, MODES, World, call, make, revoke_recommendations, u64

from viridian.tlfs.cpuid import Recommendation
from viridian.tlfs.hypercalls import FlushFlags, HvCall
from viridian.tlfs.inputs import ALL_VPS, encode_vp_set
from viridian.tlfs.status import HvStatus

OK = HvStatus.SUCCESS
ALL_AS = int(FlushFlags.ALL_VIRTUAL_ADDRESS_SPACES)
ALL_CPUS = int(FlushFlags.ALL_PROCESSORS)
EXT = int(FlushFlags.USE_EXTENDED_RANGE_FORMAT)
FLAGS_NO_EXT = "hv-vpindex,hv-tlbflush,hv-xmm-input"


def world(vp_count: int = 3, flags: str | None = None, rep_budget: int = 256) -> World:
    if flags is None:
        return make(vp_count=vp_count, rep_budget=rep_budget)
    return make(flags, vp_count=vp_count, rep_budget=rep_budget)


def needs_ud(conv: str, long_mode: bool, in_len: int) -> bool:
    """Fast input over 16 bytes is XMM input: x64 only (x86 -> #UD, TLFS §3.7)."""
    return conv == "fast" and in_len > 16 and not long_mode


def ex_block(flags: int, vps: list[int] | None, elements: tuple[int, ...] = ()) -> tuple[bytes, int]:
    """Ex header + BankContents (None = format ALL) + rep elements, and the variable-header QWORDs."""
    fmt, mask, banks = encode_vp_set(ALL_VPS if vps is None else vps)
    block = u64(0x1000) + u64(flags) + u64(fmt) + u64(mask) + b"".join(u64(b) for b in banks)
    return block + b"".join(u64(e) for e in elements), len(banks)


# -- FlushVirtualAddressSpace ------------------------------------------------------------------------------
@pytest.mark.parametrize("long_mode", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("conv", CONVS)
@pytest.mark.parametrize(
    ("flags", "mask", "targets"),
    [
        (ALL_AS, 0b101, (0, 2)),
        (0, 0b010, (1,)),
        (ALL_AS | ALL_CPUS, 0b001, (0, 1, 2)),  # ALL_PROCESSORS ignores the mask
        (ALL_AS, 0, (0, 1, 2)),  # KVM: mask 0 = every VP
        (int(FlushFlags.NON_GLOBAL_MAPPINGS_ONLY), 0b1 | 1 << 40, (0,)),  # VP 40 does not exist
    ],
)
def test_flush_space(conv: str, long_mode: bool, flags: int, mask: int, targets: tuple[int, ...]) -> None:
    w = world()
    res = call(w.partition, HvCall.FLUSH_VIRTUAL_ADDRESS_SPACE, u64(0x1000) + u64(flags) + u64(mask),
               vp=1, conv=conv, long_mode=long_mode)
    if needs_ud(conv, long_mode, 24):
        assert res.outcome.fault is not None and res.outcome.fault.vector == 6
        assert w.services.flushes == []
        return
    assert res.status == OK and res.reps == 0 and res.ram_clean
    assert w.services.flushes == [(1, targets, None)]


def test_flush_space_only_missing_vps_flushes_nothing() -> None:
    w = world()
    res = call(w.partition, HvCall.FLUSH_VIRTUAL_ADDRESS_SPACE, u64(0) + u64(ALL_AS) + u64(1 << 63))
    assert res.status == OK and w.services.flushes == []


@pytest.mark.parametrize("flags", [0x10, 0x100, 0x200, 1 << 40, 1 << 63])
def test_flush_space_reserved_flags(flags: int) -> None:
    w = world()
    res = call(w.partition, HvCall.FLUSH_VIRTUAL_ADDRESS_SPACE, u64(0) + u64(flags) + u64(1))
    assert res.status == HvStatus.INVALID_PARAMETER and w.services.flushes == []


def test_extended_range_flag_needs_the_feature() -> None:
    with_ext, without = world(), world(flags=FLAGS_NO_EXT)
    block = u64(0) + u64(EXT | ALL_AS) + u64(1)
    assert call(with_ext.partition, HvCall.FLUSH_VIRTUAL_ADDRESS_SPACE, block).status == OK
    assert call(without.partition, HvCall.FLUSH_VIRTUAL_ADDRESS_SPACE, block).status == HvStatus.INVALID_PARAMETER


@pytest.mark.parametrize("code", [HvCall.FLUSH_VIRTUAL_ADDRESS_SPACE, HvCall.FLUSH_VIRTUAL_ADDRESS_LIST,
                                  HvCall.FLUSH_VIRTUAL_ADDRESS_SPACE_EX, HvCall.FLUSH_VIRTUAL_ADDRESS_LIST_EX])
def test_not_offered_is_access_denied(code: int) -> None:
    w = world(flags="hv-vpindex,hv-relaxed")
    rep = 1 if code in (HvCall.FLUSH_VIRTUAL_ADDRESS_LIST, HvCall.FLUSH_VIRTUAL_ADDRESS_LIST_EX) else 0
    res = call(w.partition, code, bytes(40), rep_count=rep)
    assert res.status == HvStatus.ACCESS_DENIED and w.services.flushes == []


@pytest.mark.parametrize("code", [HvCall.FLUSH_VIRTUAL_ADDRESS_SPACE_EX, HvCall.FLUSH_VIRTUAL_ADDRESS_LIST_EX])
def test_ex_needs_ex_processor_masks(code: int) -> None:
    w = world()
    revoke_recommendations(w.partition, int(Recommendation.EX_PROCESSOR_MASKS))
    rep = 1 if code == HvCall.FLUSH_VIRTUAL_ADDRESS_LIST_EX else 0
    block, _ = ex_block(ALL_AS, None, (0,) * rep)
    assert call(w.partition, code, block, rep_count=rep).status == HvStatus.ACCESS_DENIED
    # the non-Ex calls stay available (KVM: R2 alone)
    assert call(w.partition, HvCall.FLUSH_VIRTUAL_ADDRESS_SPACE, u64(0) + u64(ALL_AS) + u64(1)).status == OK


def test_flush_space_rejects_rep_count() -> None:
    w = world()
    res = call(w.partition, HvCall.FLUSH_VIRTUAL_ADDRESS_SPACE, bytes(24), rep_count=1)
    assert res.status == HvStatus.INVALID_HYPERCALL_INPUT


# -- FlushVirtualAddressList -------------------------------------------------------------------------------
@pytest.mark.parametrize("rep_start", [0, 1])
@pytest.mark.parametrize("long_mode", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("conv", CONVS)
def test_flush_list(conv: str, long_mode: bool, rep_start: int) -> None:
    w = world()
    elements = [0x7000 | 2, 0xFFFF_8000_0000_0000, 0x10_0000 | 1]
    block = u64(0) + u64(ALL_AS) + u64(0b110) + b"".join(u64(e) for e in elements)
    res = call(w.partition, HvCall.FLUSH_VIRTUAL_ADDRESS_LIST, block, vp=2, conv=conv, long_mode=long_mode,
               rep_count=3, rep_start=rep_start)
    if needs_ud(conv, long_mode, len(block)):
        assert res.outcome.fault is not None and w.services.flushes == []
        return
    assert res.status == OK and res.reps == 3 and res.ram_clean
    gvas = [0x7000, 0x8000, 0x9000, 0xFFFF_8000_0000_0000, 0x10_0000, 0x10_1000]
    skip = (0, 3)[rep_start]  # rep_start 1 skips element 0 (3 pages)
    assert w.services.flushes == [(2, (1, 2), tuple(gvas[skip:]))]


def test_flush_list_non_global_is_invalid() -> None:
    w = world()
    block = u64(0) + u64(ALL_AS | int(FlushFlags.NON_GLOBAL_MAPPINGS_ONLY)) + u64(1) + u64(0x1000)
    res = call(w.partition, HvCall.FLUSH_VIRTUAL_ADDRESS_LIST, block, rep_count=1)
    assert res.status == HvStatus.INVALID_PARAMETER and res.reps == 0 and w.services.flushes == []


@pytest.mark.parametrize(("count", "additional"), [(16, 0), (1, 0xFFF), (2, 0x100)])
def test_flush_list_too_long_becomes_full_flush(count: int, additional: int) -> None:
    """KVM: more than 15 ranges -> full flush; we also cap the expansion at 512 pages."""
    w = world()
    block = u64(0) + u64(ALL_AS) + u64(1) + b"".join(u64(0x40_0000 * i | additional) for i in range(count))
    res = call(w.partition, HvCall.FLUSH_VIRTUAL_ADDRESS_LIST, block, rep_count=count)
    assert res.status == OK and res.reps == count
    assert w.services.flushes == [(0, (0,), None)]


def test_flush_list_extended_format() -> None:
    w = world()
    small = 0x20_0000 | 3  # LargePage=0, 11-bit count: 4 pages
    large = 0x4000_0000 | 1 << 11  # LargePage=1: flush everything
    base = u64(0) + u64(ALL_AS | EXT) + u64(1)
    assert call(w.partition, HvCall.FLUSH_VIRTUAL_ADDRESS_LIST, base + u64(small), rep_count=1).status == OK
    assert w.services.flushes[-1] == (0, (0,), tuple(0x20_0000 + i * 0x1000 for i in range(4)))
    assert call(w.partition, HvCall.FLUSH_VIRTUAL_ADDRESS_LIST, base + u64(large), rep_count=1).status == OK
    assert w.services.flushes[-1] == (0, (0,), None)


def test_flush_list_gva_at_top_of_address_space_is_clipped() -> None:
    w = world()
    block = u64(0) + u64(ALL_AS) + u64(1) + u64(0xFFFF_FFFF_FFFF_F000 | 3)
    assert call(w.partition, HvCall.FLUSH_VIRTUAL_ADDRESS_LIST, block, rep_count=1).status == OK
    assert w.services.flushes == [(0, (0,), (0xFFFF_FFFF_FFFF_F000,))]


def test_flush_list_continuation_under_rep_budget() -> None:
    w = world(rep_budget=4)
    elements = [0x1000 * (i + 1) for i in range(10)]
    block = u64(0) + u64(ALL_AS) + u64(1) + b"".join(u64(e) for e in elements)
    res = call(w.partition, HvCall.FLUSH_VIRTUAL_ADDRESS_LIST, block, rep_count=10)
    assert res.outcome.continued and not res.outcome.advance_rip and res.outcome.reps_completed == 4
    assert w.services.flushes == [(0, (0,), tuple(elements[:4]))]
    res = call(w.partition, HvCall.FLUSH_VIRTUAL_ADDRESS_LIST, block, rep_count=10, rep_start=8)
    assert res.status == OK and res.reps == 10
    assert w.services.flushes[-1] == (0, (0,), tuple(elements[8:]))


# -- Ex forms: HV_VP_SET with sparse banks -----------------------------------------------------------------
@pytest.mark.parametrize("long_mode", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("conv", CONVS)
def test_flush_space_ex_sparse_banks(conv: str, long_mode: bool) -> None:
    w = world(vp_count=130)
    block, banks = ex_block(ALL_AS, [0, 5, 64, 129, 130, 200, 4095])
    res = call(w.partition, HvCall.FLUSH_VIRTUAL_ADDRESS_SPACE_EX, block, vp=64, conv=conv,
               long_mode=long_mode, var_qwords=banks)
    if needs_ud(conv, long_mode, len(block)):
        assert res.outcome.fault is not None and w.services.flushes == []
        return
    assert res.status == OK and res.ram_clean
    assert w.services.flushes == [(64, (0, 5, 64, 129), None)]


def test_flush_space_ex_format_all_and_empty_sets() -> None:
    w = world(vp_count=130)
    block, banks = ex_block(ALL_AS, None)
    assert call(w.partition, HvCall.FLUSH_VIRTUAL_ADDRESS_SPACE_EX, block, var_qwords=banks).status == OK
    assert w.services.flushes == [(0, tuple(range(130)), None)]
    empty = u64(0) + u64(ALL_AS) + u64(0) + u64(0)  # sparse, no banks: nothing to do (KVM)
    assert call(w.partition, HvCall.FLUSH_VIRTUAL_ADDRESS_SPACE_EX, empty).status == OK
    zero_bank = u64(0) + u64(ALL_AS) + u64(0) + u64(1 << 3) + u64(0)  # an all-zero bank is legal
    assert call(w.partition, HvCall.FLUSH_VIRTUAL_ADDRESS_SPACE_EX, zero_bank, var_qwords=1).status == OK
    assert len(w.services.flushes) == 1


@pytest.mark.parametrize(("var_qwords", "mask", "fmt", "status"), [
    (1, 0b11, 0, HvStatus.INVALID_HYPERCALL_INPUT),  # fewer bank words than popcount (KVM)
    (3, 0b11, 0, HvStatus.INVALID_HYPERCALL_INPUT),  # more
    (0, 0b1, 1, HvStatus.INVALID_HYPERCALL_INPUT),  # format ALL still needs matching words
    (1, 0b1, 2, HvStatus.INVALID_PARAMETER),  # unknown format
])
def test_flush_space_ex_bad_sets(var_qwords: int, mask: int, fmt: int, status: HvStatus) -> None:
    w = world(vp_count=130)
    block = u64(0) + u64(ALL_AS) + u64(fmt) + u64(mask) + u64(1) * var_qwords
    res = call(w.partition, HvCall.FLUSH_VIRTUAL_ADDRESS_SPACE_EX, block, var_qwords=var_qwords)
    assert res.status == status and w.services.flushes == []


def test_flush_space_ex_all_64_banks_is_bounded() -> None:
    w = world(vp_count=130)
    block = u64(0) + u64(ALL_AS) + u64(0) + u64((1 << 64) - 1) + u64((1 << 64) - 1) * 64
    start = time.perf_counter()
    res = call(w.partition, HvCall.FLUSH_VIRTUAL_ADDRESS_SPACE_EX, block, var_qwords=64)
    assert res.status == OK and w.services.flushes == [(0, tuple(range(130)), None)]
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("rep_start", [0, 1])
@pytest.mark.parametrize("long_mode", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("conv", CONVS)
def test_flush_list_ex(conv: str, long_mode: bool, rep_start: int) -> None:
    w = world(vp_count=130)
    elements = [0x5000, 0x9000 | 1]
    block, banks = ex_block(ALL_AS, [1, 65, 128], tuple(elements))
    res = call(w.partition, HvCall.FLUSH_VIRTUAL_ADDRESS_LIST_EX, block, conv=conv, long_mode=long_mode,
               var_qwords=banks, rep_count=2, rep_start=rep_start)
    if needs_ud(conv, long_mode, len(block)):
        assert res.outcome.fault is not None and w.services.flushes == []
        return
    assert res.status == OK and res.reps == 2 and res.ram_clean
    gvas = (0x5000, 0x9000, 0xA000)[rep_start:]
    assert w.services.flushes == [(0, (1, 65, 128), gvas)]


def test_flush_list_ex_bad_set_completes_nothing() -> None:
    w = world(vp_count=130)
    block = u64(0) + u64(ALL_AS) + u64(0) + u64(0b1) + u64(0x1000) + u64(0x2000)  # var header missing
    res = call(w.partition, HvCall.FLUSH_VIRTUAL_ADDRESS_LIST_EX, block, rep_count=2)
    assert res.status == HvStatus.INVALID_HYPERCALL_INPUT and res.reps == 0 and w.services.flushes == []


def test_flush_list_page_of_reps_is_bounded() -> None:
    """A whole page of GvaRanges (509 reps, each naming 4096 pages) stays cheap: full flush."""
    w = world(vp_count=2, rep_budget=4095)
    count = (4096 - 24) // 8
    block = u64(0) + u64(ALL_AS | ALL_CPUS) + u64(0) + u64(0xFFF) * count
    start = time.perf_counter()
    res = call(w.partition, HvCall.FLUSH_VIRTUAL_ADDRESS_LIST, block, rep_count=count)
    assert res.status == OK and res.reps == count and w.services.flushes == [(0, (0, 1), None)]
    assert time.perf_counter() - start < 1.0
