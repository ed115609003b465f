"""Overlay pages and SynIC messages: sizes, offsets and bytes written out by hand from the TLFS tables."""

from __future__ import annotations

import pytest

from viridian.tlfs import pages as P


def test_page_sizes() -> None:
    for struct in (
        P.HV_REFERENCE_TSC_PAGE,
        P.HV_VP_ASSIST_PAGE,
        P.HV_MESSAGE_PAGE,
        P.HV_SYNIC_EVENT_FLAGS_PAGE,
    ):
        assert struct.sizeof() == 4096
    assert P.HV_MESSAGE.sizeof() == 256
    assert P.HV_MESSAGE_HEADER.sizeof() == 16
    assert P.HV_TIMER_MESSAGE_PAYLOAD.sizeof() == 24
    assert P.HV_VP_VTL_CONTROL.sizeof() == 24
    assert P.HV_NESTED_ENLIGHTENMENTS_CONTROL.sizeof() == 8


def test_reference_tsc_page_offsets_and_bytes() -> None:
    tsc = P.HV_REFERENCE_TSC_PAGE
    assert [
        P.offset_of(tsc, n) for n in ("tsc_sequence", "reserved1", "tsc_scale", "tsc_offset", "reserved2")
    ] == [
        0,
        4,
        8,
        16,
        24,
    ]
    assert (P.TSC_SEQUENCE_OFFSET, P.TSC_SCALE_OFFSET, P.TSC_OFFSET_OFFSET) == (0, 8, 16)
    page = bytes.fromhex("02000000 00000000 efcdab8967452301 feffffffffffffff") + bytes(4096 - 24)
    f = tsc.parse(page)
    assert (f.tsc_sequence, f.tsc_scale, f.tsc_offset) == (2, 0x0123456789ABCDEF, -2)
    assert len(f.reserved2) == 509
    assert tsc.build(f) == page


def test_vp_assist_page_offsets() -> None:
    vp = P.HV_VP_ASSIST_PAGE
    expected = {
        "apic_assist": 0x00,
        "rsvdz0": 0x04,
        "vtl_control": 0x08,
        "nested_control": 0x20,
        "enlighten_vm_entry": 0x28,
        "current_nested_vmcs": 0x30,
        "synthetic_time_unhalted_timer_expired": 0x38,
        "virtualization_fault_information": 0x40,
    }
    assert {n: P.offset_of(vp, n) for n in expected} == expected
    assert P.VP_ASSIST_APIC_ASSIST_OFFSET == 0
    assert P.VP_ASSIST_VTL_CONTROL_OFFSET == 0x08
    assert P.VP_ASSIST_NESTED_CONTROL_OFFSET == 0x20
    assert P.VP_ASSIST_ENLIGHTEN_VM_ENTRY_OFFSET == 0x28
    assert P.VP_ASSIST_CURRENT_NESTED_VMCS_OFFSET == 0x30
    assert P.VP_ASSIST_STIME_UNHALTED_TIMER_EXPIRED_OFFSET == 0x38
    assert P.VP_ASSIST_VIRTUALIZATION_FAULT_OFFSET == 0x40
    assert P.offset_of(vp, "virtualization_fault_information") % 16 == 0
    page = bytearray(4096)
    page[0] = 1  # NoEoiRequired
    page[0x30:0x38] = (0xABCDE000).to_bytes(8, "little")
    f = vp.parse(bytes(page))
    assert (f.apic_assist, f.current_nested_vmcs) == (1, 0xABCDE000)
    with pytest.raises(KeyError):
        P.offset_of(vp, "nope")


def test_vtl_control_layout() -> None:
    raw = bytes.fromhex("01000000 01 00 0000 1122334455667788 0807060504030201")
    f = P.HV_VP_VTL_CONTROL.parse(raw)
    assert (f.entry_reason, f.vina_status, f.vtl_return_x64_rax, f.vtl_return_x64_rcx) == (
        1,
        1,
        0x8877665544332211,
        0x0102030405060708,
    )


def test_message_header_offsets_and_parse() -> None:
    names = ["message_type", "payload_size", "message_flags", "reserved", "origination_id", "payload"]
    assert [P.offset_of(P.HV_MESSAGE, n) for n in names] == [0, 4, 5, 6, 8, 16]
    assert (
        P.MESSAGE_TYPE_OFFSET,
        P.MESSAGE_PAYLOAD_SIZE_OFFSET,
        P.MESSAGE_FLAGS_OFFSET,
        P.MESSAGE_ORIGINATION_ID_OFFSET,
        P.MESSAGE_PAYLOAD_OFFSET,
    ) == (0, 4, 5, 8, 16)
    raw = bytes.fromhex("10000080 18 01 0000 0700000000000000") + bytes(240)
    f = P.HV_MESSAGE.parse(raw)
    assert (f.message_type, f.payload_size, f.message_flags, f.origination_id) == (0x80000010, 24, 1, 7)


def test_timer_expired_message_bytes() -> None:
    msg = P.timer_expired_message(2, expiration_time=0x1000, delivery_time=0x1005)
    expected = (
        bytes.fromhex("10000080 18 00 0000 0000000000000000")  # TimerExpired, 24 bytes, sender 0
        + bytes.fromhex("02000000 00000000 0010000000000000 0510000000000000")
        + bytes(240 - 24)
    )
    assert msg == expected
    with pytest.raises(ValueError):
        P.timer_expired_message(4, 0, 0)


def test_build_message() -> None:
    msg = P.build_message(0x1234, b"hello", origination_id=9, pending=True)
    assert msg[:16] == bytes.fromhex("34120000 05 01 0000 0900000000000000")
    assert msg[16:21] == b"hello" and msg[21:] == bytes(235)
    assert P.build_message(1, bytes(240))[4] == 240
    with pytest.raises(ValueError):
        P.build_message(1, bytes(241))


def test_sim_and_sief_offsets() -> None:
    assert [P.sim_slot_offset(n) for n in (0, 1, 15)] == [0, 256, 3840]
    assert P.sief_area_offset(2) == 512
    assert P.sief_flag_position(0, 0) == (0, 0)
    assert P.sief_flag_position(2, 13) == (512 + 1, 5)
    assert P.sief_flag_position(15, 2047) == (4095, 7)
    for bad in (
        lambda: P.sim_slot_offset(16),
        lambda: P.sief_flag_position(0, 2048),
        lambda: P.sief_area_offset(-1),
    ):
        with pytest.raises(ValueError):
            bad()


def test_sim_and_sief_pages_parse() -> None:
    page = bytearray(4096)
    page[3 * 256 : 3 * 256 + 4] = (0x80000010).to_bytes(4, "little")
    sim = P.HV_MESSAGE_PAGE.parse(bytes(page))
    assert len(sim.sint_message) == 16
    assert sim.sint_message[3].message_type == 0x80000010
    assert sim.sint_message[2].message_type == 0
    flags = bytearray(4096)
    byte, bit = P.sief_flag_position(5, 100)
    flags[byte] |= 1 << bit
    sief = P.HV_SYNIC_EVENT_FLAGS_PAGE.parse(bytes(flags))
    assert sief.sint_event_flags[5][100 // 8] == 1 << (100 % 8)
