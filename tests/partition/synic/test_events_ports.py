"""Event flags (SIEF) and host ports driven by HvPostMessage / HvSignalEvent hypercalls."""

from __future__ import annotations

import struct

import pytest
from synic_harness import SIEF_GPA, SIM_GPA, VEC, make, post_input, signal_input

from viridian.partition.ports import PortRegistry, ports_of
from viridian.tlfs.hypercalls import HvCall
from viridian.tlfs.msrs import HvMsr
from viridian.tlfs.status import HvStatus

OK = HvStatus.SUCCESS
POST, SIGNAL = HvCall.POST_MESSAGE, HvCall.SIGNAL_EVENT


# -- event flags -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("sint", "flag"), [(0, 0), (0, 7), (1, 8), (9, 1000), (15, 2047)])
def test_signal_event_sets_bit_once_and_interrupts_once(sint: int, flag: int) -> None:
    rig = make()
    rig.enable()
    rig.sint(sint)
    synic = rig.part.vps[0].synic
    assert synic.signal_event(sint, flag) is True
    byte = SIEF_GPA + sint * 256 + flag // 8
    assert rig.mem.read(byte, 1)[0] == 1 << (flag % 8)
    others = rig.mem.read(SIEF_GPA, 4096)
    assert sum(bin(b).count("1") for b in others) == 1
    assert rig.apics[0].vectors == [VEC]
    assert synic.signal_event(sint, flag) is False  # already set: no second interrupt
    assert rig.apics[0].vectors == [VEC]
    rig.mem.write(byte, b"\0")  # guest consumed the flag
    assert synic.signal_event(sint, flag) is True
    assert rig.apics[0].vectors == [VEC, VEC]


def test_signal_event_disabled_sief_writes_nothing() -> None:
    rig = make()
    rig.enable(sief=None)
    rig.sint(0)
    synic = rig.part.vps[0].synic
    assert synic.signal_event(0, 3) is False
    assert synic.event_state(0) == HvStatus.INVALID_SYNIC_STATE
    assert rig.apics[0].vectors == []


def test_event_state_masked_sint() -> None:
    rig = make()
    rig.enable()
    assert rig.part.vps[0].synic.event_state(0) == HvStatus.INVALID_SYNIC_STATE  # reset value is masked
    rig.sint(0)
    assert rig.part.vps[0].synic.event_state(0) == OK


# -- ports registry ---------------------------------------------------------------------------------------------
def test_registry_is_per_partition_and_validates() -> None:
    rig, other = make(), make()
    reg = ports_of(rig.part)
    assert ports_of(rig.part) is reg and ports_of(other.part) is not reg
    assert isinstance(reg, PortRegistry)
    reg.create_message_port(1, 0, 0)
    for bad in (
        lambda: reg.create_message_port(1, 0, 0),  # duplicate
        lambda: reg.create_message_port(1 << 24, 0, 0),  # 31:24 must be zero
        lambda: reg.create_message_port(2, 5, 0),  # no such VP
        lambda: reg.create_event_port(3, 0, 16),  # no such SINT
        lambda: reg.create_event_port(4, 0, 0, flag_base=2000, flag_count=100),
    ):
        with pytest.raises(ValueError):
            bad()
    reg.delete(1)
    reg.delete(1)  # idempotent
    assert len(reg) == 0


# -- HvPostMessage ----------------------------------------------------------------------------------------------
def _target(rig_vp: int = 1):  # type: ignore[no-untyped-def]
    rig = make()
    rig.enable(rig_vp, sim=SIM_GPA + 0x4000, sief=SIEF_GPA + 0x4000)
    rig.sint(3, 0x77, vp=rig_vp)
    ports_of(rig.part).create_message_port(0x42, rig_vp, 3)
    ports_of(rig.part).create_event_port(0x43, rig_vp, 3, flag_base=100, flag_count=10)
    return rig


def test_post_message_delivers_to_target_vp() -> None:
    rig = _target()
    assert rig.hypercall(POST, post_input(0x42, 0x99, b"payload!")) == OK
    raw = rig.slot(3, sim=SIM_GPA + 0x4000)
    assert struct.unpack_from("<IBBHQ", raw) == (0x99, 8, 0, 0, 0x42)
    assert raw[16:24] == b"payload!"
    assert rig.apics[1].vectors == [0x77] and rig.apics[0].vectors == []
    assert 1 in rig.services.kicks


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (post_input(0x42, 0, b""), HvStatus.INVALID_PARAMETER),  # type 0
        (post_input(0x42, 0x8000_0001, b""), HvStatus.INVALID_PARAMETER),  # hypervisor type
        (post_input(0x42, 1, b"", size=241), HvStatus.INVALID_PARAMETER),
        (post_input(0x42 | 1 << 24, 1, b""), HvStatus.INVALID_HYPERCALL_INPUT),  # RsvdZ 31:24
        (post_input(0x42, 1, b"", reserved=1), HvStatus.INVALID_HYPERCALL_INPUT),
        (post_input(0x41, 1, b""), HvStatus.INVALID_CONNECTION_ID),
        (post_input(0x43, 1, b""), HvStatus.INVALID_PORT_ID),  # an event port
        (post_input(0x42, 1, bytes(240)), OK),
    ],
)
def test_post_message_errors(data: bytes, status: HvStatus) -> None:
    rig = _target()
    assert rig.hypercall(POST, data) == status


def test_post_message_target_disabled_and_queue_full() -> None:
    rig = _target()
    rig.ok(HvMsr.SCONTROL, 0, vp=1)
    assert rig.hypercall(POST, post_input(0x42, 1, b"x")) == HvStatus.INVALID_SYNIC_STATE
    rig.ok(HvMsr.SCONTROL, 1, vp=1)
    statuses = [rig.hypercall(POST, post_input(0x42, 1, b"x")) for _ in range(40)]
    assert statuses.count(OK) == 17 and statuses[17:] == [HvStatus.INSUFFICIENT_BUFFERS] * 23


def test_post_message_is_slow_only_and_gated() -> None:
    rig = _target()
    assert rig.hypercall(POST, post_input(0x42, 1, b"")[:16], fast=True) == HvStatus.INVALID_HYPERCALL_INPUT
    gated = make("hv-vpindex,hv-time")
    assert gated.hypercall(POST, post_input(0x42, 1, b"")) == HvStatus.ACCESS_DENIED
    assert gated.hypercall(SIGNAL, signal_input(0x43, 0), fast=True) == HvStatus.ACCESS_DENIED


def test_post_message_to_host_handler() -> None:
    rig = make()
    got: list[tuple[int, bytes]] = []

    def handler(msg_type: int, payload: bytes) -> HvStatus:
        got.append((msg_type, payload))
        return HvStatus.INSUFFICIENT_BUFFERS if len(got) > 1 else OK

    ports_of(rig.part).create_message_port(9, 0, 0, handler=handler)
    assert rig.hypercall(POST, post_input(9, 5, b"hi")) == OK
    assert rig.hypercall(POST, post_input(9, 6, b"")) == HvStatus.INSUFFICIENT_BUFFERS
    assert got == [(5, b"hi"), (6, b"")]


# -- HvSignalEvent -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fast", [True, False])
def test_signal_event_hypercall(fast: bool) -> None:
    rig = _target()
    assert rig.hypercall(SIGNAL, signal_input(0x43, 4), fast=fast) == OK
    assert rig.flag_set(3, 104, sief=SIEF_GPA + 0x4000)  # port base 100 + flag 4
    assert rig.apics[1].vectors == [0x77]
    assert rig.hypercall(SIGNAL, signal_input(0x43, 4), fast=fast) == OK  # already set: no interrupt
    assert rig.apics[1].vectors == [0x77]


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (signal_input(0x43, 10), HvStatus.INVALID_PARAMETER),  # flag >= port flag count
        (signal_input(0x43, 0xFFFF), HvStatus.INVALID_PARAMETER),
        (signal_input(0x43, 0, reserved=1), HvStatus.INVALID_HYPERCALL_INPUT),
        (signal_input(0x43 | 1 << 24, 0), HvStatus.INVALID_HYPERCALL_INPUT),
        (signal_input(0x44, 0), HvStatus.INVALID_CONNECTION_ID),
        (signal_input(0x42, 0), HvStatus.INVALID_PORT_ID),  # a message port
        (signal_input(0x43, 9), OK),
    ],
)
def test_signal_event_errors(data: bytes, status: HvStatus) -> None:
    rig = _target()
    assert rig.hypercall(SIGNAL, data, fast=True) == status


def test_signal_event_masked_sint_or_disabled_sief() -> None:
    rig = _target()
    rig.sint(3, 0x77, masked=True, vp=1)
    assert rig.hypercall(SIGNAL, signal_input(0x43, 0), fast=True) == HvStatus.INVALID_SYNIC_STATE
    rig.sint(3, 0x77, vp=1)
    rig.ok(HvMsr.SIEFP, 0, vp=1)
    assert rig.hypercall(SIGNAL, signal_input(0x43, 0), fast=True) == HvStatus.INVALID_SYNIC_STATE
    assert rig.apics[1].vectors == []


def test_deleted_connection() -> None:
    rig = _target()
    ports_of(rig.part).delete(0x43)
    assert rig.hypercall(SIGNAL, signal_input(0x43, 0), fast=True) == HvStatus.INVALID_CONNECTION_ID
