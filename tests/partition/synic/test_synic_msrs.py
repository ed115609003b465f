"""SynIC and synthetic-timer MSRs: gates, initial values, read/write, reserved bits, vector rules."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from synic_harness import GP, SIM_GPA, Rig, make

from viridian.partition.message_queue import SynicMessage
from viridian.tlfs.cpuid import Feature
from viridian.tlfs.msrs import HvMsr, sint_msr, stimer_config_msr, stimer_count_msr

SYNIC_MSRS = [HvMsr.SCONTROL, HvMsr.SVERSION, HvMsr.SIEFP, HvMsr.SIMP, HvMsr.EOM] + [sint_msr(n) for n in range(16)]
STIMER_MSRS = [stimer_config_msr(n) for n in range(4)] + [stimer_count_msr(n) for n in range(4)]
INITIAL = {HvMsr.SCONTROL: 0, HvMsr.SVERSION: 1, HvMsr.SIEFP: 0, HvMsr.SIMP: 0, HvMsr.EOM: 0}
INITIAL.update({sint_msr(n): 0x10000 for n in range(16)})
INITIAL.update({i: 0 for i in STIMER_MSRS})


class _Granted:
    """The real CPUID offer plus extra feature bits."""

    def __init__(self, base: Any, features: int) -> None:
        self._base, self._features = base, features

    def __getattr__(self, name: str) -> Any:
        return getattr(self._base, name)

    @property
    def features(self) -> Any:
        return self._base.features | self._features


def grant_features(rig: Rig, features: int) -> None:
    rig.part.offer = _Granted(rig.part.offer, features)  # type: ignore[assignment]


@pytest.mark.parametrize("index", SYNIC_MSRS + STIMER_MSRS, ids=hex)
@pytest.mark.parametrize("offered", [True, False], ids=["offered", "not-offered"])
def test_gate_and_initial_value(index: int, offered: bool) -> None:
    """Not offered -> #GP both ways (KVM enforce_cpuid); offered -> the TLFS reset value."""
    is_timer = index in STIMER_MSRS
    flags = "hv-vpindex,hv-time,hv-synic,hv-stimer" if offered else ("hv-vpindex,hv-time,hv-synic" if is_timer
                                                                     else "hv-vpindex,hv-time")
    rig = make(flags)
    if not offered:
        assert rig.rd(index) == GP
        assert rig.wr(index, 0) == GP
        return
    assert rig.rd(index) == INITIAL[index]
    assert rig.rd(index, vp=1) == INITIAL[index]


# (MSR, written value, expected read-back or GP)
WRITES = [
    (HvMsr.SCONTROL, 1, 1),
    (HvMsr.SCONTROL, 0xFFFF_FFFF_FFFF_FFFF, 0xFFFF_FFFF_FFFF_FFFF),  # 63:1 RsvdP: kept as written
    (HvMsr.SVERSION, 1, GP),  # read-only
    (HvMsr.SVERSION, 0, GP),
    (HvMsr.SIMP, SIM_GPA | 1, SIM_GPA | 1),
    (HvMsr.SIMP, SIM_GPA | 0xFFE, SIM_GPA | 0xFFE),  # RsvdP 11:1, disabled
    (HvMsr.SIEFP, 0x3000 | 1, 0x3000 | 1),
    (HvMsr.SIMP, (1 << 40) | 1, (1 << 40) | 1),  # beyond RAM: no #GP, page inaccessible
    (HvMsr.SIEFP, (1 << 40) | 1, (1 << 40) | 1),
    (HvMsr.EOM, 0x1234, 0),  # reads 0
    (sint_msr(0), 0x10, 0x10),
    (sint_msr(3), 0xFF | 1 << 17, 0xFF | 1 << 17),
    (sint_msr(1), 0x0F, GP),  # unmasked vector < 16
    (sint_msr(15), 0x00, GP),
    (sint_msr(2), 0x10000, 0x10000),  # masked vector 0: allowed (KVM)
    (sint_msr(2), 0x1000F, 0x1000F),
    (sint_msr(4), 0x40 | 0xAB00, 0x40 | 0xAB00),  # RsvdP 15:8 kept
    (sint_msr(5), 0x40 | 1 << 18, GP),  # polling not offered
    (stimer_config_msr(0), 1 << 13, GP),  # RsvdZ 15:13
    (stimer_config_msr(1), 1 << 15, GP),
    (stimer_config_msr(2), 1 << 20, GP),  # RsvdZ 63:20
    (stimer_config_msr(3), 1 << 63, GP),
    (stimer_config_msr(0), 0x40 << 4 | 2 << 16 | 0b1110, 0x40 << 4 | 2 << 16 | 0b1110),
    (stimer_config_msr(0), 1 | 2 << 16, 1 | 2 << 16),  # enabled, COUNT 0: stays enabled, never fires
    (stimer_config_msr(1), 1, 0),  # enable with SINTx 0 in message mode: Enable forced 0 (TLFS)
    (stimer_config_msr(1), 1 | 1 << 12 | 0x50 << 4, 1 | 1 << 12 | 0x50 << 4),  # direct mode, SINTx 0 fine
    (stimer_count_msr(2), 12345, 12345),
    (stimer_count_msr(3), 0xFFFF_FFFF_FFFF_FFFF, 0xFFFF_FFFF_FFFF_FFFF),
]


@pytest.mark.parametrize(("index", "value", "expect"), WRITES, ids=lambda v: hex(v) if isinstance(v, int) else v)
def test_write_read_back(index: int, value: int, expect: int | str) -> None:
    rig = make()
    if expect == GP:
        before = rig.rd(index)
        assert rig.wr(index, value) == GP
        assert rig.rd(index) == before
    else:
        assert rig.wr(index, value) is None
        assert rig.rd(index) == expect


def test_polling_bit_with_feature() -> None:
    rig = make()
    grant_features(rig, Feature.SINT_POLLING_MODE)
    assert rig.wr(sint_msr(5), 0x40 | 1 << 18) is None
    assert rig.rd(sint_msr(5)) == 0x40 | 1 << 18


@pytest.mark.parametrize("n", range(4))
def test_direct_mode_needs_feature(n: int) -> None:
    rig = make("hv-vpindex,hv-time,hv-synic,hv-stimer")
    assert rig.wr(stimer_config_msr(n), 1 << 12 | 0x50 << 4) == GP
    assert rig.wr(stimer_config_msr(n), 2 << 16) is None


@pytest.mark.parametrize("n", range(16))
@pytest.mark.parametrize("vector", [0, 1, 15, 16, 17, 255])
@pytest.mark.parametrize("masked", [False, True])
def test_sint_vector_rule(n: int, vector: int, masked: bool) -> None:
    """KVM synic_set_sint: vector < 16 #GPs only when the SINT is unmasked."""
    rig = make()
    value = vector | masked << 16
    expect = GP if vector < 16 and not masked else None
    assert rig.wr(sint_msr(n), value) == expect


def test_per_vp_state() -> None:
    rig = make()
    rig.ok(HvMsr.SCONTROL, 1, vp=1)
    rig.ok(sint_msr(2), 0x33, vp=1)
    assert rig.rd(HvMsr.SCONTROL, vp=0) == 0
    assert rig.rd(sint_msr(2), vp=0) == 0x10000
    assert rig.rd(sint_msr(2), vp=1) == 0x33


def test_simp_enable_zeroes_page_once() -> None:
    rig = make()
    rig.mem.write(SIM_GPA, b"\xAA" * 4096)
    rig.ok(HvMsr.SIMP, SIM_GPA | 1)
    assert rig.mem.read(SIM_GPA, 4096) == bytes(4096)
    rig.mem.write(SIM_GPA, b"\x55")
    rig.ok(HvMsr.SIMP, SIM_GPA | 1)  # same page rewritten: contents kept
    assert rig.mem.read(SIM_GPA, 1) == b"\x55"
    rig.mem.write(SIM_GPA + 0x1000, b"\xAA" * 4096)
    rig.ok(HvMsr.SIMP, (SIM_GPA + 0x1000) | 1)  # moved: the new page is zeroed
    assert rig.mem.read(SIM_GPA + 0x1000, 4096) == bytes(4096)


def test_disabled_page_write_leaves_ram_alone() -> None:
    rig = make()
    rig.mem.write(SIM_GPA, b"\xAA" * 16)
    rig.ok(HvMsr.SIMP, SIM_GPA)  # enable bit clear
    rig.ok(HvMsr.SIEFP, SIM_GPA)
    assert rig.mem.read(SIM_GPA, 16) == b"\xAA" * 16


def test_reset_restores_initial_values() -> None:
    rig = make()
    rig.enable()
    rig.sint(3)
    rig.stimer(0, 1 | 3 << 16, 10_000)
    rig.part.vps[0].reset()
    for index in SYNIC_MSRS + STIMER_MSRS:
        assert rig.rd(index) == INITIAL[index], hex(index)
    assert rig.poll() is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(SYNIC_MSRS), st.integers(0, (1 << 64) - 1)), max_size=30))
def test_random_synic_writes_never_raise(writes: list[tuple[int, int]]) -> None:
    """Any value into any SynIC MSR: a value or #GP, never a host exception; SINT reads stay consistent."""
    rig = make()
    for index, value in writes:
        before = rig.rd(index)
        res = rig.wr(index, value)
        assert res in (None, GP)
        if res == GP:
            assert rig.rd(index) == before
        rig.part.vps[0].synic.post_message(index & 15, SynicMessage(1, b"x"))
        rig.part.vps[0].synic.signal_event(index & 15, value & 2047)
        assert rig.poll() is None
    assert rig.part.vps[0].synic.queued <= 16 * 16
