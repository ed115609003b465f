"""QEMU's hyperv-testdev (hw/misc/hyperv_testdev.c) on the partition model: control codes 1-7, engine-free."""

from __future__ import annotations

import struct

from synic_harness import SIEF_GPA, VEC, make, post_input, signal_input

from viridian.devices.hyperv_testdev import (
    EVT_CONN_CREATE,
    EVT_CONN_DESTROY,
    MSG_CONN_CREATE,
    MSG_CONN_DESTROY,
    PORT,
    SINT_ROUTE_CREATE,
    SINT_ROUTE_DESTROY,
    SINT_ROUTE_SET_SINT,
    HypervTestDev,
    encode,
)
from viridian.tlfs.hypercalls import HvCall
from viridian.tlfs.status import HvStatus


def ctl(dev: HypervTestDev, code: int, vp: int = 0, sint: int = 0, conn: int = 0) -> None:
    dev.write(PORT, 4, encode(code, vp, sint, conn))


def test_encoding_is_conn_ctl_vp_sint() -> None:
    assert encode(3, 1, 2, 0x42) == 0x42030102


def test_sint_route_set_raises_the_sint_on_that_vp() -> None:
    rig = make(vp_count=2)
    rig.enable(vp=1)
    rig.sint(5, vp=1)
    dev = HypervTestDev(rig.part)
    ctl(dev, SINT_ROUTE_CREATE, vp=1, sint=5)
    ctl(dev, SINT_ROUTE_SET_SINT, vp=1, sint=5)
    ctl(dev, SINT_ROUTE_SET_SINT, vp=1, sint=5)
    assert rig.apics[1].vectors == [VEC, VEC] and rig.apics[0].vectors == []
    assert dev.sints_raised == 2 and dev.misuse == 0
    ctl(dev, SINT_ROUTE_DESTROY, vp=1, sint=5)
    ctl(dev, SINT_ROUTE_SET_SINT, vp=1, sint=5)  # no route: QEMU asserts, we count and ignore
    assert rig.apics[1].vectors == [VEC, VEC] and dev.misuse == 1


def test_set_sint_needs_an_enabled_synic_and_an_unmasked_sint() -> None:
    rig = make(vp_count=1)
    dev = HypervTestDev(rig.part)
    ctl(dev, SINT_ROUTE_CREATE, sint=2)
    ctl(dev, SINT_ROUTE_SET_SINT, sint=2)  # SCONTROL clear
    rig.enable()
    ctl(dev, SINT_ROUTE_SET_SINT, sint=2)  # SINT2 still masked (reset value)
    assert rig.apics[0].vectors == [] and dev.sints_raised == 0 and dev.misuse == 0
    rig.sint(2)
    ctl(dev, SINT_ROUTE_SET_SINT, sint=2)
    assert rig.apics[0].vectors == [VEC] and dev.sints_raised == 1


def test_only_32_bit_writes_at_0x3000_count_and_reads_are_zero() -> None:
    rig = make(vp_count=1)
    dev = HypervTestDev(rig.part)
    dev.write(PORT, 2, encode(SINT_ROUTE_CREATE))
    dev.write(PORT + 1, 4, encode(SINT_ROUTE_CREATE))
    assert dev.routes == [] and dev.read(PORT, 4) == 0 and dev.read(PORT + 2, 1) == 0
    ctl(dev, 0x99)  # unknown control code: ignored, as in QEMU
    assert dev.misuse == 0


def test_message_connection_echoes_the_post_into_the_sim_slot() -> None:
    rig = make(vp_count=2)
    rig.enable(vp=1)
    rig.sint(4, vp=1)
    dev = HypervTestDev(rig.part)
    ctl(dev, MSG_CONN_CREATE, vp=1, sint=4, conn=0x21)
    assert rig.hypercall(HvCall.POST_MESSAGE, post_input(0x21, 0x1234, b"ping")) == HvStatus.SUCCESS
    msg_type, size = struct.unpack_from("<IB", rig.slot(4))
    assert (msg_type, size) == (0x1234, 4) and rig.slot(4)[16:20] == b"ping"
    assert rig.apics[1].vectors == [VEC]
    ctl(dev, MSG_CONN_CREATE, vp=1, sint=4, conn=0x21)  # already exists
    assert dev.misuse == 1
    ctl(dev, MSG_CONN_DESTROY, conn=0x21)
    assert rig.hypercall(HvCall.POST_MESSAGE, post_input(0x21, 1, b"x")) == HvStatus.INVALID_CONNECTION_ID
    ctl(dev, MSG_CONN_DESTROY, conn=0x21)
    assert dev.misuse == 2


def test_event_connection_sets_flag_conn_id() -> None:
    rig = make(vp_count=1)
    rig.enable()
    rig.sint(6)
    dev = HypervTestDev(rig.part)
    ctl(dev, EVT_CONN_CREATE, sint=6, conn=9)
    assert rig.hypercall(HvCall.SIGNAL_EVENT, signal_input(9, 0), fast=True) == HvStatus.SUCCESS
    assert rig.flag_set(6, 9) and rig.apics[0].vectors == [VEC]
    assert rig.hypercall(HvCall.SIGNAL_EVENT, signal_input(9, 0), fast=True) == HvStatus.SUCCESS
    assert rig.apics[0].vectors == [VEC]  # the flag was already set: no second interrupt
    assert sum(bin(b).count("1") for b in rig.mem.read(SIEF_GPA, 4096)) == 1
    assert rig.hypercall(HvCall.SIGNAL_EVENT, signal_input(9, 1), fast=True) != HvStatus.SUCCESS
    ctl(dev, EVT_CONN_DESTROY, conn=9)
    assert rig.hypercall(HvCall.SIGNAL_EVENT, signal_input(9, 0), fast=True) == HvStatus.INVALID_CONNECTION_ID


def test_kinds_are_not_mixed_and_bad_targets_are_refused() -> None:
    rig = make(vp_count=1)
    dev = HypervTestDev(rig.part)
    ctl(dev, MSG_CONN_CREATE, sint=1, conn=3)
    ctl(dev, EVT_CONN_DESTROY, conn=3)  # it is a message connection
    ctl(dev, SINT_ROUTE_CREATE, vp=7, sint=1)  # no VP 7
    ctl(dev, EVT_CONN_CREATE, sint=16, conn=4)  # no SINT 16
    assert dev.misuse == 3 and dev.msg_conns == {3: (0, 1)} and dev.evt_conns == {} and dev.routes == []


def test_state_round_trip_recreates_connections() -> None:
    rig = make(vp_count=1)
    dev = HypervTestDev(rig.part)
    ctl(dev, SINT_ROUTE_CREATE, sint=2)
    ctl(dev, EVT_CONN_CREATE, sint=2, conn=5)
    state = dev.save_state()
    ctl(dev, EVT_CONN_DESTROY, conn=5)
    dev.load_state(state)
    assert dev.routes == [(0, 2)] and dev.evt_conns == {5: (0, 2)}
    rig.enable()
    rig.sint(2)
    assert rig.hypercall(HvCall.SIGNAL_EVENT, signal_input(5, 0), fast=True) == HvStatus.SUCCESS
