"""Hypercall input value / result value codecs and the register conventions (TLFS §3.7, §3.8)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from viridian.abi.control import HypercallControl, decode_result, result_value
from viridian.abi.registers import M32, M64, HypercallRegisters, fast_output_capacity
from viridian.tlfs import hypercalls as hc
from viridian.tlfs.status import HvStatus

U64 = st.integers(0, M64)
RESERVED_BITS = (*range(27, 31), *range(44, 48), *range(60, 64))

# (input value, expected decoded fields): each field at its edges, nothing else set.
FIELDS: list[tuple[int, HypercallControl]] = [
    (0x0000_0000_0000_0000, HypercallControl(0)),
    (0x0000_0000_0000_0001, HypercallControl(1)),
    (0x0000_0000_0000_FFFF, HypercallControl(0xFFFF)),
    (0x0000_0000_0000_8001, HypercallControl(0x8001)),
    (0x0000_0000_0001_0000, HypercallControl(0, fast=True)),
    (0x0000_0000_0002_0000, HypercallControl(0, var_header_qwords=1)),
    (0x0000_0000_0400_0000, HypercallControl(0, var_header_qwords=0x200)),  # bit 26: 10-bit field (md)
    (0x0000_0000_07FE_0000, HypercallControl(0, var_header_qwords=0x3FF)),
    (0x0000_0000_8000_0000, HypercallControl(0, nested=True)),
    (0x0000_0001_0000_0000, HypercallControl(0, rep_count=1)),
    (0x0000_0FFF_0000_0000, HypercallControl(0, rep_count=0xFFF)),
    (0x0001_0000_0000_0000, HypercallControl(0, rep_start=1)),
    (0x0FFF_0000_0000_0000, HypercallControl(0, rep_start=0xFFF)),
    (0x0123_0456_0003_0003, HypercallControl(3, fast=True, var_header_qwords=1, rep_count=0x456, rep_start=0x123)),
    *[(1 << bit, HypercallControl(0, reserved=1 << bit)) for bit in RESERVED_BITS],
]


@pytest.mark.parametrize(("value", "fields"), FIELDS, ids=[f"{v:#018x}" for v, _ in FIELDS])
def test_decode_each_field(value: int, fields: HypercallControl) -> None:
    assert HypercallControl.decode(value) == fields


@pytest.mark.parametrize(("value", "fields"), FIELDS, ids=[f"{v:#018x}" for v, _ in FIELDS])
def test_encode_each_field(value: int, fields: HypercallControl) -> None:
    assert fields.encode() == value


def test_reserved_mask_is_exactly_the_rsvdz_bits() -> None:
    assert sum(1 << b for b in RESERVED_BITS) == hc.CONTROL_RESERVED_MASK
    named = (hc.CONTROL_CODE_MASK | hc.CONTROL_FAST | hc.CONTROL_VARHEAD_MASK | hc.CONTROL_NESTED
             | hc.CONTROL_REP_COUNT_MASK | hc.CONTROL_REP_START_MASK)
    assert named & hc.CONTROL_RESERVED_MASK == 0
    assert named | hc.CONTROL_RESERVED_MASK == M64


@given(U64)
def test_decode_encode_round_trip(value: int) -> None:
    assert HypercallControl.decode(value).encode() == value


@given(st.builds(HypercallControl, st.integers(0, 0xFFFF), st.booleans(), st.integers(0, 0x3FF), st.booleans(),
                 st.integers(0, 0xFFF), st.integers(0, 0xFFF),
                 st.integers(0, M64).map(lambda v: v & hc.CONTROL_RESERVED_MASK)))
def test_encode_decode_round_trip(ctl: HypercallControl) -> None:
    assert HypercallControl.decode(ctl.encode()) == ctl


@given(U64, st.integers(0, 0xFFF))
def test_with_rep_start_changes_only_rep_start(value: int, start: int) -> None:
    new = HypercallControl.decode(value).with_rep_start(start).encode()
    assert new & ~hc.CONTROL_REP_START_MASK == value & ~hc.CONTROL_REP_START_MASK
    assert new >> 48 & 0xFFF == start


def test_decode_ignores_bits_above_64() -> None:
    assert HypercallControl.decode(1 << 64 | 5) == HypercallControl(5)


# -- result value -------------------------------------------------------------------------------------
RESULTS = [
    (HvStatus.SUCCESS, 0, 0x0),
    (HvStatus.SUCCESS, 25, 25 << 32),
    (HvStatus.INVALID_HYPERCALL_CODE, 0, 0x2),
    (HvStatus.INVALID_ALIGNMENT, 0xFFF, 0xFFF << 32 | 4),
    (HvStatus.VTL_ALREADY_ENABLED, 7, 7 << 32 | 0x86),
]


@pytest.mark.parametrize(("status", "reps", "value"), RESULTS)
def test_result_value(status: HvStatus, reps: int, value: int) -> None:
    assert result_value(status, reps) == value
    assert decode_result(value) == (status, reps)


def test_result_value_fields_cannot_spill() -> None:
    assert result_value(0x1_0003, 0x1001) == 1 << 32 | 3  # only 15:0 and 43:32 are ever set


def test_decode_result_ignores_reserved_bits_and_keeps_unknown_codes() -> None:
    assert decode_result(0xFFFF_F000_FFFF_0005) == (HvStatus.INVALID_PARAMETER, 0)
    status, reps = decode_result(0x1234)
    assert status == 0x1234 and not isinstance(status, HvStatus) and reps == 0


# -- register conventions -----------------------------------------------------------------------------
JUNK_HI = 0xDEAD_BEEF_0000_0000


def test_x64_reads_rcx_rdx_r8() -> None:
    r = HypercallRegisters(long_mode=True, rax=1, rbx=2, rcx=0x1111, rdx=0x2222, rsi=3, rdi=4, r8=0x3333)
    assert (r.control, r.param1, r.param2) == (0x1111, 0x2222, 0x3333)


def test_x86_reads_edx_eax_ebx_ecx_edi_esi_ignoring_upper_halves() -> None:
    r = HypercallRegisters(long_mode=False, rax=JUNK_HI | 0xA, rdx=JUNK_HI | 0xD, rbx=JUNK_HI | 0xB,
                           rcx=JUNK_HI | 0xC, rdi=JUNK_HI | 0xE, rsi=JUNK_HI | 0xF, r8=0x99)
    assert r.control == 0xD << 32 | 0xA
    assert r.param1 == 0xB << 32 | 0xC
    assert r.param2 == 0xE << 32 | 0xF


@pytest.mark.parametrize("long_mode", [True, False], ids=["x64", "x86"])
def test_result_and_control_writes(long_mode: bool) -> None:
    r = HypercallRegisters(long_mode=long_mode)
    value = 0x0123_4567_89AB_CDEF
    if long_mode:
        assert r.result_writes(value) == {"rax": value}
        assert r.control_writes(value) == {"rcx": value}
    else:
        assert r.result_writes(value) == {"rax": 0x89AB_CDEF, "rdx": 0x0123_4567}
        assert r.control_writes(value) == {"rax": 0x89AB_CDEF, "rdx": 0x0123_4567}
    assert all(v <= (M64 if long_mode else M32) for v in r.result_writes(M64).values())


@pytest.mark.parametrize(("in_len", "capacity"),
                         [(0, 112), (1, 96), (8, 96), (16, 96), (17, 80), (24, 80), (96, 16), (97, 0), (112, 0)])
def test_fast_output_capacity(in_len: int, capacity: int) -> None:
    assert fast_output_capacity(in_len) == capacity


def test_fast_input_block_order_and_truncation() -> None:
    xmm = [int.from_bytes(bytes(range(16 * n + 16, 16 * n + 32)), "little") for n in range(6)]
    r = HypercallRegisters(rdx=int.from_bytes(bytes(range(8)), "little"),
                           r8=int.from_bytes(bytes(range(8, 16)), "little"), xmm=xmm)
    assert r.fast_input_block(112, xmm=True) == bytes(range(112))
    assert r.fast_input_block(40, xmm=True) == bytes(range(40))
    assert r.fast_input_block(16, xmm=False) == bytes(range(16))
    assert r.fast_input_block(5, xmm=False) == bytes(range(5))
