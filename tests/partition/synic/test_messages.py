"""Message delivery into a real guest-memory SIM page: layout, MessagePending/EOM/EOI redelivery,
masked / auto-EOI / polling SINTs, disabled targets, bounded queues under floods."""

from __future__ import annotations

import struct

import pytest
from synic_harness import SIEF_GPA, SIM_GPA, VEC, make
from test_synic_msrs import grant_features

from viridian.partition.message_queue import DEFAULT_QUEUE_DEPTH, SynicMessage
from viridian.tlfs.cpuid import Feature
from viridian.tlfs.msrs import HvMsr
from viridian.tlfs.status import HvStatus

OK = HvStatus.SUCCESS


def msg(n: int = 0, size: int = 8) -> SynicMessage:
    return SynicMessage(0x100 + n, bytes((n + i) & 0xFF for i in range(size)), origin=0xABC0 + n)


def test_delivery_bytes_at_exact_offsets() -> None:
    rig = make()
    rig.enable()
    rig.sint(2)
    payload = bytes(range(240))
    assert rig.part.vps[0].synic.post_message(2, SynicMessage(0x1234, payload, 0x1122334455667788)) == OK
    raw = rig.slot(2)
    assert struct.unpack_from("<I", raw, 0)[0] == 0x1234  # MessageType
    assert raw[4] == 240  # PayloadSize
    assert raw[5] == 0  # MessageFlags
    assert raw[6:8] == b"\0\0"  # Reserved
    assert struct.unpack_from("<Q", raw, 8)[0] == 0x1122334455667788  # OriginationId
    assert raw[16:256] == payload
    assert rig.slot(1) == bytes(256) and rig.slot(3) == bytes(256)  # neighbours untouched
    assert rig.apics[0].vectors == [VEC]
    assert rig.services.kicks == [0]


def test_short_payload_copies_header_plus_payload_only() -> None:
    rig = make()
    rig.enable()
    rig.sint(0)
    rig.mem.write(SIM_GPA + 16 + 4, b"\xEE" * 8)  # guest scribbled in the slot after enabling
    rig.part.vps[0].synic.post_message(0, SynicMessage(7, b"abcd"))
    raw = rig.slot(0)
    assert raw[16:20] == b"abcd"
    assert raw[20:28] == b"\xEE" * 8  # TLFS: only header + PayloadSize bytes are copied


def test_busy_slot_sets_message_pending_then_eom_redelivers() -> None:
    rig = make()
    rig.enable()
    rig.sint(5)
    synic = rig.part.vps[0].synic
    assert synic.post_message(5, msg(1)) == OK
    assert synic.post_message(5, msg(2)) == OK
    assert rig.slot_header(5)[0] == 0x101
    assert rig.slot_header(5)[2] == 1  # MessagePending set in the occupied slot
    assert synic.queued == 1
    first = rig.consume(5)  # clears type, sees MessagePending, writes EOM
    assert first[5] == 1
    hdr = rig.slot_header(5)
    assert hdr[0] == 0x102 and hdr[2] == 0 and hdr[4] == 0xABC2
    assert synic.queued == 0
    assert rig.apics[0].vectors == [VEC, VEC]


def test_eom_with_nothing_queued_is_a_noop() -> None:
    rig = make()
    rig.enable()
    rig.ok(HvMsr.EOM, 0)
    assert rig.apics[0].vectors == []
    assert rig.mem.read(SIM_GPA, 4096) == bytes(4096)


def test_eoi_of_the_sint_vector_rescans() -> None:
    rig = make()
    rig.enable()
    rig.sint(4, 0x55)
    rig.sint(6, 0x66)
    synic = rig.part.vps[0].synic
    for n in range(3):
        synic.post_message(4, msg(n))
    rig.consume(4, eom=False)
    synic.on_eoi(0x66)  # another SINT's vector: nothing
    assert rig.slot_header(4)[0] == 0
    synic.on_eoi(0x55)
    assert rig.slot_header(4)[0] == 0x101
    assert synic.queued == 1


def test_fifo_order() -> None:
    rig = make()
    rig.enable()
    rig.sint(1)
    synic = rig.part.vps[0].synic
    for n in range(10):
        assert synic.post_message(1, msg(n)) == OK
    seen = [struct.unpack_from("<I", rig.consume(1))[0] - 0x100 for _ in range(10)]
    assert seen == list(range(10))
    assert rig.slot_header(1)[0] == 0


def test_poll_delivers_after_slot_freed_without_eom() -> None:
    rig = make()
    rig.enable()
    rig.sint(1)
    synic = rig.part.vps[0].synic
    synic.post_message(1, msg(1))
    synic.post_message(1, msg(2))
    rig.consume(1, eom=False)
    assert rig.poll() is None  # no timer deadline; the queued message went out
    assert rig.slot_header(1)[0] == 0x102


def test_masked_sint_gets_message_but_no_interrupt() -> None:
    rig = make()
    rig.enable()
    rig.sint(3, masked=True)
    assert rig.part.vps[0].synic.post_message(3, msg()) == OK
    assert rig.slot_header(3)[0] == 0x100
    assert rig.apics[0].vectors == []
    rig.ok(HvMsr.SINT0 + 3, VEC)  # unmasking does not re-raise for the message already there
    assert rig.apics[0].vectors == []


def test_polling_sint_gets_message_but_no_interrupt() -> None:
    rig = make()
    grant_features(rig, Feature.SINT_POLLING_MODE)
    rig.enable()
    rig.sint(3, polling=True)
    rig.part.vps[0].synic.post_message(3, msg())
    assert rig.slot_header(3)[0] == 0x100
    assert rig.apics[0].vectors == []


def test_auto_eoi_vectors_for_the_machine() -> None:
    rig = make()
    rig.enable()
    synic = rig.part.vps[0].synic
    rig.sint(0, 0x31, auto_eoi=True)
    rig.sint(1, 0x32, auto_eoi=True, masked=True)
    rig.sint(2, 0x33)
    assert synic.auto_eoi_vectors == {0x31}
    assert synic.is_auto_eoi(0x31) and not synic.is_auto_eoi(0x32) and not synic.is_auto_eoi(0x33)
    synic.post_message(0, msg(1))
    synic.post_message(0, msg(2))
    assert rig.apics[0].vectors == [0x31]
    rig.consume(0, eom=False)
    synic.on_eoi(0x31)  # what the machine calls after the implicit EOI at acknowledge
    assert rig.slot_header(0)[0] == 0x102


def test_apic_refusing_the_interrupt_does_not_lose_the_message() -> None:
    rig = make()
    rig.apics[0].accept = False
    rig.enable()
    rig.sint(0)
    assert rig.part.vps[0].synic.post_message(0, msg()) == OK
    assert rig.slot_header(0)[0] == 0x100


@pytest.mark.parametrize("state", ["scontrol-off", "simp-off", "simp-beyond-ram"])
def test_disabled_target_is_invalid_synic_state(state: str) -> None:
    rig = make()
    rig.enable(sim={"scontrol-off": SIM_GPA, "simp-off": None, "simp-beyond-ram": 1 << 40}[state])
    if state == "scontrol-off":
        rig.ok(HvMsr.SCONTROL, 0)
    rig.sint(0)
    synic = rig.part.vps[0].synic
    assert synic.post_message(0, msg()) == HvStatus.INVALID_SYNIC_STATE
    assert synic.queued == 0
    assert rig.apics[0].vectors == []


def test_queued_message_survives_sim_disable_and_goes_out_on_reenable() -> None:
    rig = make()
    rig.enable()
    rig.sint(0)
    synic = rig.part.vps[0].synic
    synic.post_message(0, msg(1))
    synic.post_message(0, msg(2))
    rig.ok(HvMsr.SIMP, SIM_GPA)  # disable
    rig.mem.write(SIM_GPA, b"\0\0\0\0")
    rig.ok(HvMsr.EOM, 0)
    assert synic.queued == 1  # nowhere to go
    rig.ok(HvMsr.SIMP, SIM_GPA | 0x2000 | 1)  # a new page: zeroed, then the queue drains into it
    assert rig.slot_header(0, sim=SIM_GPA | 0x2000)[0] == 0x102


def test_flood_every_sint_keeps_memory_bounded() -> None:
    rig = make(vp_count=2)
    for vp in range(2):
        rig.enable(vp, sim=SIM_GPA + vp * 0x4000, sief=SIEF_GPA + vp * 0x4000)
        for sint in range(16):
            rig.sint(sint, vp=vp)
    for vp in range(2):
        synic = rig.part.vps[vp].synic
        for sint in range(16):
            statuses = [synic.post_message(sint, msg(n & 0x7F)) for n in range(1000)]
            assert statuses[: 1 + DEFAULT_QUEUE_DEPTH] == [OK] * (1 + DEFAULT_QUEUE_DEPTH)
            assert set(statuses[1 + DEFAULT_QUEUE_DEPTH :]) == {HvStatus.INSUFFICIENT_BUFFERS}
        assert synic.queued == 16 * DEFAULT_QUEUE_DEPTH
        assert all(len(q) == DEFAULT_QUEUE_DEPTH for q in synic.queues)
    # the guest drains everything eventually
    synic = rig.part.vps[0].synic
    for _ in range(DEFAULT_QUEUE_DEPTH + 1):
        rig.consume(7, sim=SIM_GPA)
    assert len(synic.queues[7]) == 0 and rig.slot_header(7)[0] == 0


def test_message_validation() -> None:
    with pytest.raises(ValueError):
        SynicMessage(0, b"")
    with pytest.raises(ValueError):
        SynicMessage(1, bytes(241))
