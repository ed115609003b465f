"""Reference time and the reference TSC page: formula, sequence protocol, frequency change, monotonicity.

Expected values are computed by hand:
- 2 GHz TSC: TscScale = floor(2**64 * 10**7 / 2e9) = floor(2**64 / 200) = 92233720368547758 (the .08
  remainder is dropped, so whole seconds land one unit short: 2e9 ticks -> 9999999).
- 2**32 Hz TSC: TscScale = 10**7 * 2**32 exactly, so ReferenceTime = floor(tsc * 10**7 / 2**32).
"""

from __future__ import annotations

import struct
from typing import Any

import pytest

from viridian.abi.memory import BytesMemory
from viridian.clock import VirtualClock
from viridian.partition.reftime import next_sequence, page_time
from viridian.tlfs.msrs import HvMsr

GP = "#GP"
TSC_GPA = 0x10000
SCALE_2GHZ = 92233720368547758
SCALE_2P32 = 10**7 << 32


def _page(memory: BytesMemory, gpa: int = TSC_GPA) -> tuple[int, int, int]:
    """(TscSequence, TscScale, TscOffset) as the guest reads them."""
    seq, _rsvd, scale, offset = struct.unpack("<IIQq", memory.read(gpa, 24))
    return seq, scale, offset


def _guest_time(memory: BytesMemory, tsc: int) -> int:
    """The guest's algorithm (TLFS §12.7): sequence 0 would mean "use the MSR"."""
    seq, scale, offset = _page(memory)
    assert seq not in (0, 0xFFFFFFFF)
    return page_time(tsc, scale, offset)


def _enable(kit: Any, w: Any) -> None:
    assert kit.wr(w.partition, HvMsr.REFERENCE_TSC, TSC_GPA | 1) is None


@pytest.mark.parametrize(
    ("tsc", "expected"),
    [
        (0, 0),
        (1_000, 4),  # 500 ns = 5 units, floored scale -> 4
        (123_456_789, 617_283),  # 61.7283945 ms
        (2_000_000_000, 9_999_999),  # 1 s, one unit short
        (7_200_000_000_000, 35_999_999_999),  # 1 h
    ],
)
def test_page_formula_equals_msr_2ghz(kit: Any, tsc: int, expected: int) -> None:
    w = kit.world("hv-time")
    _enable(kit, w)
    assert _page(w.memory)[1:] == (SCALE_2GHZ, 0)
    w.clock.set_tsc(tsc)
    assert kit.rd(w.partition, HvMsr.TIME_REF_COUNT) == expected
    assert _guest_time(w.memory, tsc) == expected
    assert w.partition.reference_time() == expected


@pytest.mark.parametrize(
    ("tsc", "expected"),
    [(0, 0), (1 << 32, 10_000_000), (3 * (1 << 32) + 5, 30_000_000), (1 << 31, 5_000_000),
     (429_496_730, 1_000_000)],
)
def test_page_formula_equals_msr_exact_scale(kit: Any, tsc: int, expected: int) -> None:
    w = kit.world("hv-time")
    w.clock.tsc_hz = 1 << 32
    _enable(kit, w)
    assert _page(w.memory)[1:] == (SCALE_2P32, 0)
    w.clock.set_tsc(tsc)
    assert kit.rd(w.partition, HvMsr.TIME_REF_COUNT) == expected == _guest_time(w.memory, tsc)


def test_next_sequence_skips_invalid_markers() -> None:
    assert next_sequence(0) == 1
    assert next_sequence(1) == 2
    assert next_sequence(0xFFFFFFFD) == 0xFFFFFFFE
    assert next_sequence(0xFFFFFFFE) == 1  # skips 0xFFFFFFFF and 0
    assert next_sequence(0xFFFFFFFF) == 1


def test_sequence_bumps_and_is_never_invalid(kit: Any) -> None:
    w = kit.world("hv-time")
    part = w.partition
    seen = []
    for _ in range(3):
        _enable(kit, w)
        seen.append(_page(w.memory)[0])
    assert seen == [1, 2, 3]
    part.time.sequence = 0xFFFFFFFE  # force the wrap
    _enable(kit, w)
    assert _page(w.memory)[0] == 1
    part.time.invalidate()
    assert _page(w.memory)[0] == 0  # invalid: guests fall back to TIME_REF_COUNT
    assert part.time.republish()
    assert _page(w.memory)[0] == 2
    assert [tuple(o) for o in part.overlays()] == [(TSC_GPA, "reference_tsc", False)]


def test_page_layout_whole_page(kit: Any) -> None:
    w = kit.world("hv-time")
    w.memory.write(TSC_GPA, b"\xaa" * 4096)
    _enable(kit, w)
    raw = w.memory.read(TSC_GPA, 4096)
    assert raw[4:8] == bytes(4) and raw[24:] == bytes(4096 - 24)  # Reserved1, Reserved2 zeroed


def test_disable_and_move(kit: Any) -> None:
    w = kit.world("hv-time")
    part = w.partition
    _enable(kit, w)
    assert kit.wr(part, HvMsr.REFERENCE_TSC, TSC_GPA) is None  # disabled: page untouched (KVM)
    assert _page(w.memory)[0] == 1 and part.overlays() == []
    assert kit.wr(part, HvMsr.REFERENCE_TSC, 0x20000 | 1) is None
    assert _page(w.memory, 0x20000) == (2, SCALE_2GHZ, 0)


def test_gpfn_beyond_ram_is_inaccessible_not_gp(kit: Any) -> None:
    w = kit.world("hv-time", mem_mib=1)
    part = w.partition
    value = (1 << 20) | 1  # GPA 1 MiB = first byte past RAM
    assert kit.wr(part, HvMsr.REFERENCE_TSC, value) is None
    assert kit.rd(part, HvMsr.REFERENCE_TSC) == value
    assert part.time.page_gpa is None and part.overlays() == []
    w.clock.set_tsc(2_000_000_000)
    assert kit.rd(part, HvMsr.TIME_REF_COUNT) == 9_999_999  # the MSR still works


def test_frequency_change_keeps_time_continuous(kit: Any) -> None:
    w = kit.world("hv-time")
    part = w.partition
    w.clock.tsc_hz = 1 << 32
    _enable(kit, w)
    w.clock.set_tsc(1 << 32)
    assert part.reference_time() == 10_000_000
    part.change_tsc_frequency(1 << 31)
    # new scale 10**7 << 33; offset = 1e7 - (2**32 * 10**7 * 2**33 >> 64) = 1e7 - 2e7
    seq, scale, offset = _page(w.memory)
    assert (seq, scale, offset) == (2, 10**7 << 33, -10_000_000)
    assert kit.rd(part, HvMsr.TIME_REF_COUNT) == 10_000_000 == _guest_time(w.memory, 1 << 32)
    w.clock.set_tsc((1 << 32) + (1 << 31))  # one more second at 2**31 Hz
    assert kit.rd(part, HvMsr.TIME_REF_COUNT) == 20_000_000 == _guest_time(w.memory, w.clock.tsc())
    assert kit.rd(part, HvMsr.TSC_FREQUENCY) == GP  # hv-frequencies not offered here
    # deadlines convert back through the offset
    assert part.time.tsc_for_ref_time(20_000_000) == (1 << 32) + (1 << 31)
    # 2e7 + 1 after removing the offset: ceil((2e7 + 1) * 2**31 / 1e7) = 2**32 + 215
    assert part.time.tsc_for_ref_time(10_000_001) == (1 << 32) + 215
    for ref in (10_000_000, 12_345_678, 99_999_999):
        t = part.time.tsc_for_ref_time(ref)
        assert page_time(t, scale, offset) >= ref > page_time(t - 1, scale, offset)


def test_reference_time_is_monotonic(kit: Any) -> None:
    w = kit.world("hv-time")
    part = w.partition
    _enable(kit, w)
    last = -1
    for step, hz in enumerate([None, 3_000_000_000, None, 1_000_000_007, None, 2_000_000_000]):
        if hz is not None:
            part.change_tsc_frequency(hz)
        for _ in range(50):
            w.clock.advance_tsc(977 * (step + 1))
            now = kit.rd(part, HvMsr.TIME_REF_COUNT)
            assert now >= last and now == _guest_time(w.memory, w.clock.tsc())
            last = now


class _FakeApic:
    x2apic = False

    def __init__(self) -> None:
        self.raised: list[int] = []

    def assert_interrupt(self, vector: int, level: bool = False) -> bool:
        self.raised.append(vector)
        return True


def test_reenlightenment_on_frequency_change(kit: Any) -> None:
    from viridian.config.qemu import parse_qemu
    from viridian.partition.partition import Partition
    from viridian.partition.services import RecordingServices

    apics = [_FakeApic(), _FakeApic()]
    services = RecordingServices()
    part = Partition(parse_qemu("hv-time,hv-reenlightenment"), BytesMemory(1 << 20), vp_count=2,
                     services=services, clock=VirtualClock(), apics=apics)  # type: ignore[arg-type]
    part.change_tsc_frequency(3_000_000_000)  # not enabled: nothing happens
    assert apics[1].raised == [] and part.time.tsc_emulation_status == 0
    assert kit.wr(part, HvMsr.TSC_EMULATION_CONTROL, 1) is None
    assert kit.wr(part, HvMsr.REENLIGHTENMENT_CONTROL, (1 << 32) | (1 << 16) | 0x55) is None
    part.change_tsc_frequency(2_500_000_000)
    assert apics[1].raised == [0x55] and services.kicks == [1]
    assert kit.rd(part, HvMsr.TSC_EMULATION_STATUS) == 1
    assert kit.wr(part, HvMsr.TSC_EMULATION_STATUS, 0) is None  # guest acknowledges
    assert kit.rd(part, HvMsr.TSC_EMULATION_STATUS) == 0
    # target VP that does not exist: dropped, never raises
    assert kit.wr(part, HvMsr.REENLIGHTENMENT_CONTROL, (9 << 32) | (1 << 16) | 0x55) is None
    part.change_tsc_frequency(2_000_000_000)
    assert apics[1].raised == [0x55]
