"""Hostile HV_VP_SETs through HvCallFlushVirtualAddressSpaceEx / HvCallSendSyntheticClusterIpiEx: any mask,
any number of bank words, any format -> a defined status and exactly the reference targets."""

from __future__ import annotations

from hc_harness import call, make, u32, u64
from hypothesis import given, settings
from hypothesis import strategies as st

from viridian.tlfs.hypercalls import FlushFlags, HvCall
from viridian.tlfs.status import HvStatus

VP_COUNT = 130
WORLD = make(vp_count=VP_COUNT)
u64s = st.integers(min_value=0, max_value=(1 << 64) - 1)
masks = st.one_of(u64s, st.integers(0, 7), st.just((1 << 64) - 1), st.sampled_from([1 << 63, 1 << 2 | 1]))


def reference(fmt: int, mask: int, words: list[int]) -> HvStatus | tuple[int, ...]:
    """The spec reading: words must match popcount(mask) (KVM), formats 0/1 only, VPs >= count ignored."""
    if len(words) != mask.bit_count():
        return HvStatus.INVALID_HYPERCALL_INPUT
    if fmt == 1:
        return tuple(range(VP_COUNT))
    if fmt != 0:
        return HvStatus.INVALID_PARAMETER
    banks = [b for b in range(64) if mask >> b & 1]
    return tuple(sorted(64 * bank + bit for bank, word in zip(banks, words, strict=True)
                        for bit in range(64) if word >> bit & 1 and 64 * bank + bit < VP_COUNT))


@settings(max_examples=300, deadline=None)
@given(fmt=st.one_of(st.integers(0, 2), u64s), mask=masks,
       words=st.lists(st.one_of(u64s, st.just(0)), max_size=70), ipi=st.booleans())
def test_hostile_vp_sets(fmt: int, mask: int, words: list[int], ipi: bool) -> None:
    WORLD.services.flushes.clear()
    WORLD.services.ipis.clear()
    tail = u64(fmt) + u64(mask) + b"".join(u64(w) for w in words)
    if ipi:
        block, code = u32(0x40) + bytes(4) + tail, HvCall.SEND_SYNTHETIC_CLUSTER_IPI_EX
    else:
        block, code = u64(0) + u64(FlushFlags.ALL_VIRTUAL_ADDRESS_SPACES) + tail, HvCall.FLUSH_VIRTUAL_ADDRESS_SPACE_EX
    res = call(WORLD.partition, code, block, var_qwords=len(words))
    expected = reference(fmt, mask, words)
    if isinstance(expected, HvStatus):
        assert res.status == expected
        assert WORLD.services.flushes == [] and WORLD.services.ipis == []
        return
    assert res.status == HvStatus.SUCCESS and res.ram_clean
    if ipi:
        assert tuple(t for _, t, _ in WORLD.services.ipis) == expected
    else:
        assert WORLD.services.flushes == ([(0, expected, None)] if expected else [])
