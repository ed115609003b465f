"""HV_VP_SET decode/encode: the TLFS example, error statuses, and property tests."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from viridian.tlfs.inputs import (
    ALL_VPS,
    VpSet,
    VpSetError,
    bank_words_from_bytes,
    encode_vp_set,
    parse_vp_set,
    vp_set_from_mask,
)
from viridian.tlfs.status import HvStatus

U64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
ANY_INT = st.one_of(U64, st.integers(), st.integers(min_value=-4, max_value=4))


def test_spec_example() -> None:
    # TLFS hv_vp_set.md: {0, 5, 130} -> Format 0, ValidBanksMask 0x5, BankContents {0x21, 0x4}
    assert encode_vp_set([0, 5, 130]) == (0, 0x5, (0x21, 0x4))
    assert parse_vp_set(0, 0x5, [0x21, 0x4]) == VpSet(False, frozenset({0, 5, 130}))


def test_all_format() -> None:
    assert parse_vp_set(1, 0, []) == ALL_VPS
    assert parse_vp_set(1, 0b11, [0, 0]).all  # contents ignored, count still checked
    assert encode_vp_set(ALL_VPS) == (1, 0, ())
    assert ALL_VPS.members(3) == [0, 1, 2]
    assert 4000 in ALL_VPS


def test_empty_banks_and_empty_set() -> None:
    assert parse_vp_set(0, 0, []) == VpSet(False, frozenset())
    assert parse_vp_set(0, 0b10, [0]).indices == frozenset()  # an all-zero bank is legal
    assert encode_vp_set([]) == (0, 0, ())


def test_high_banks() -> None:
    assert parse_vp_set(0, 1 << 63, [1 << 63]).indices == {4095}
    assert encode_vp_set([4095, 64]) == (0, (1 << 63) | 0b10, (1, 1 << 63))


def test_members_and_contains() -> None:
    s = parse_vp_set(0, 0x5, [0x21, 0x4])
    assert s.members(200) == [0, 5, 130]
    assert s.members(100) == [0, 5]
    assert 5 in s and 6 not in s


def test_errors_carry_status() -> None:
    with pytest.raises(VpSetError) as e:
        parse_vp_set(0, 0x5, [0x21])
    assert e.value.status == HvStatus.INVALID_HYPERCALL_INPUT
    with pytest.raises(VpSetError) as e:
        parse_vp_set(1, 0x1, [])
    assert e.value.status == HvStatus.INVALID_HYPERCALL_INPUT
    with pytest.raises(VpSetError) as e:
        parse_vp_set(2, 0, [])
    assert e.value.status == HvStatus.INVALID_PARAMETER
    with pytest.raises(VpSetError) as e:
        parse_vp_set(0, 1 << 64, [])
    assert e.value.status == HvStatus.INVALID_PARAMETER
    with pytest.raises(VpSetError):
        parse_vp_set(0, 1, [1 << 64])
    with pytest.raises(VpSetError):
        parse_vp_set(0, 1, b"\x01\x02\x03")
    assert isinstance(VpSetError("x", HvStatus.INVALID_PARAMETER), ValueError)


def test_bytes_bank_words() -> None:
    words = (0x21).to_bytes(8, "little") + (0x4).to_bytes(8, "little")
    assert bank_words_from_bytes(words) == (0x21, 0x4)
    assert parse_vp_set(0, 0x5, words).indices == {0, 5, 130}


def test_processor_mask() -> None:
    assert vp_set_from_mask(0b1011).indices == {0, 1, 3}
    with pytest.raises(VpSetError):
        vp_set_from_mask(1 << 64)


def test_encode_rejects_out_of_range() -> None:
    with pytest.raises(ValueError):
        encode_vp_set([4096])
    with pytest.raises(ValueError):
        encode_vp_set([-1])


@given(st.frozensets(st.integers(0, 4095), max_size=200))
def test_round_trip(indices: frozenset[int]) -> None:
    fmt, mask, banks = encode_vp_set(indices)
    assert fmt == 0 and len(banks) == mask.bit_count() <= 64
    assert all(banks)  # the encoder emits only non-empty banks
    assert parse_vp_set(fmt, mask, banks) == VpSet(False, indices)


@given(U64, st.lists(U64, max_size=64))
def test_decode_encode_is_canonical(mask: int, words: list[int]) -> None:
    words = words[: mask.bit_count()] + [0] * max(0, mask.bit_count() - len(words))
    decoded = parse_vp_set(0, mask, words)
    assert all(0 <= i < 4096 for i in decoded.indices)
    fmt, mask2, banks2 = encode_vp_set(decoded)
    assert parse_vp_set(fmt, mask2, banks2) == decoded


@given(ANY_INT, ANY_INT, st.lists(ANY_INT, max_size=70))
def test_malformed_input_only_raises_vp_set_error(fmt: int, mask: int, words: list[int]) -> None:
    try:
        result = parse_vp_set(fmt, mask, words)
    except VpSetError as exc:
        assert exc.status in (HvStatus.INVALID_HYPERCALL_INPUT, HvStatus.INVALID_PARAMETER)
    else:
        assert isinstance(result, VpSet)
        assert fmt in (0, 1) and 0 <= mask < 1 << 64 and len(words) == mask.bit_count()


@given(ANY_INT, ANY_INT, st.binary(max_size=600))
def test_malformed_bytes_only_raise_vp_set_error(fmt: int, mask: int, data: bytes) -> None:
    with contextlib.suppress(VpSetError):
        parse_vp_set(fmt, mask, data)
