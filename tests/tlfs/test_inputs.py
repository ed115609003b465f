"""Hypercall input/output blocks and HV_REGISTER_NAME against the TLFS hypercall pages."""

from __future__ import annotations

from viridian.tlfs import inputs as I
from viridian.tlfs.msrs import HvMsr
from viridian.tlfs.pages import offset_of


def test_block_sizes() -> None:
    assert I.HV_INPUT_FLUSH_VIRTUAL_ADDRESS_SPACE.sizeof() == 24
    assert I.HV_INPUT_FLUSH_VIRTUAL_ADDRESS_LIST.sizeof() == 24
    assert I.HV_INPUT_FLUSH_VIRTUAL_ADDRESS_SPACE_EX_HEADER.sizeof() == 32
    assert I.HV_INPUT_SEND_SYNTHETIC_CLUSTER_IPI.sizeof() == 16
    assert I.HV_INPUT_SEND_SYNTHETIC_CLUSTER_IPI_EX_HEADER.sizeof() == 24
    assert I.HV_INPUT_POST_MESSAGE.sizeof() == 256
    assert I.HV_INPUT_SIGNAL_EVENT.sizeof() == 8
    assert I.HV_INPUT_GET_VP_REGISTERS.sizeof() == I.HV_INPUT_SET_VP_REGISTERS.sizeof() == 16
    assert I.HV_REGISTER_NAME_ELEMENT.sizeof() == 4
    assert I.HV_REGISTER_VALUE.sizeof() == 16
    assert I.HV_REGISTER_ASSOC.sizeof() == 32
    assert I.HV_OUTPUT_EXT_QUERY_CAPABILITIES.sizeof() == 8


def test_field_offsets() -> None:
    flush = I.HV_INPUT_FLUSH_VIRTUAL_ADDRESS_SPACE
    assert [offset_of(flush, n) for n in ("address_space", "flags", "processor_mask")] == [0, 8, 16]
    ex = I.HV_INPUT_FLUSH_VIRTUAL_ADDRESS_SPACE_EX_HEADER
    assert [offset_of(ex, n) for n in ("address_space", "flags", "vp_set_format", "valid_banks_mask")] == [
        0,
        8,
        16,
        24,
    ]
    ipi = I.HV_INPUT_SEND_SYNTHETIC_CLUSTER_IPI
    assert [offset_of(ipi, n) for n in ("vector", "target_vtl", "rsvdz", "processor_mask")] == [0, 4, 5, 8]
    ipi_ex = I.HV_INPUT_SEND_SYNTHETIC_CLUSTER_IPI_EX_HEADER
    assert [offset_of(ipi_ex, n) for n in ("vp_set_format", "valid_banks_mask")] == [8, 16]
    post = I.HV_INPUT_POST_MESSAGE
    assert [
        offset_of(post, n) for n in ("connection_id", "rsvdz", "message_type", "payload_size", "message")
    ] == [
        0,
        4,
        8,
        12,
        16,
    ]
    regs = I.HV_INPUT_GET_VP_REGISTERS
    assert [offset_of(regs, n) for n in ("partition_id", "vp_index", "target_vtl", "rsvdz")] == [0, 8, 12, 13]
    assert [offset_of(I.HV_REGISTER_ASSOC, n) for n in ("name", "rsvdz", "value")] == [0, 4, 16]


def test_flush_space_bytes() -> None:
    raw = bytes.fromhex("0010000000000000 0300000000000000 0500000000000000")
    f = I.HV_INPUT_FLUSH_VIRTUAL_ADDRESS_SPACE.parse(raw)
    assert (f.address_space, f.flags, f.processor_mask) == (0x1000, 3, 5)


def test_flush_ex_with_spec_vp_set() -> None:
    # TLFS hv_vp_set.md example {0, 5, 130}: ValidBanksMask 0x5, BankContents {0x21, 0x4}
    raw = (
        bytes.fromhex("0020000000000000 0200000000000000")
        + bytes.fromhex("0000000000000000 0500000000000000")
        + bytes.fromhex("2100000000000000 0400000000000000")
    )
    f = I.HV_INPUT_FLUSH_VIRTUAL_ADDRESS_SPACE_EX.parse(raw)
    assert f.processor_set.valid_banks_mask == 5
    assert list(f.processor_set.bank_contents) == [0x21, 0x4]
    header = I.HV_INPUT_FLUSH_VIRTUAL_ADDRESS_SPACE_EX_HEADER.parse(raw[:32])
    vp_set = I.parse_vp_set(header.vp_set_format, header.valid_banks_mask, raw[32:])
    assert vp_set.indices == {0, 5, 130}
    assert I.vp_set_bytes([0, 5, 130]) == raw[16:]


def test_send_ipi_matches_fast_register_form() -> None:
    # Windows issues it fast: RDX = Vector | TargetVtl << 32, R8 = mask; the memory form has the same bytes.
    rdx, r8 = 0x51 | (0x10 << 32), 0x0000000000000006
    f = I.HV_INPUT_SEND_SYNTHETIC_CLUSTER_IPI.parse(rdx.to_bytes(8, "little") + r8.to_bytes(8, "little"))
    assert (f.vector, f.target_vtl, f.rsvdz, f.processor_mask) == (0x51, 0x10, 0, 6)
    ex = I.HV_INPUT_SEND_SYNTHETIC_CLUSTER_IPI_EX.parse(
        rdx.to_bytes(8, "little") + (1).to_bytes(8, "little") + bytes(8)
    )
    assert (
        ex.processor_set.format,
        ex.processor_set.valid_banks_mask,
        list(ex.processor_set.bank_contents),
    ) == (
        1,
        0,
        [],
    )


def test_signal_event_fast_form() -> None:
    rdx = 0x00000123 | (7 << 32)  # ConnectionId 0x123, FlagNumber 7
    f = I.HV_INPUT_SIGNAL_EVENT.parse(rdx.to_bytes(8, "little"))
    assert (f.connection_id, f.flag_number, f.rsvdz) == (0x123, 7, 0)


def test_post_message_block() -> None:
    block = I.HV_INPUT_POST_MESSAGE.build(
        {
            "connection_id": 0x10001,
            "rsvdz": 0,
            "message_type": 1,
            "payload_size": 3,
            "message": b"abc".ljust(240, b"\0"),
        }
    )
    assert block[:16] == bytes.fromhex("01000100 00000000 01000000 03000000")
    assert block[16:19] == b"abc" and len(block) == 256


def test_vp_registers_blocks() -> None:
    header = bytes.fromhex("ffffffffffffffff feffffff 00 000000")
    f = I.HV_INPUT_GET_VP_REGISTERS.parse(header)
    assert (f.partition_id, f.vp_index, f.target_vtl, f.rsvdz) == (2**64 - 1, 0xFFFFFFFE, 0, 0)
    assert I.HV_REGISTER_NAME_ELEMENT.parse(bytes.fromhex("02000900")).name == I.HvRegisterName.GUEST_OS_ID
    assoc = bytes.fromhex("13000a00") + bytes(12) + (0x5000 | 1).to_bytes(8, "little") + bytes(8)
    g = I.HV_REGISTER_ASSOC.parse(assoc)
    assert (g.name, g.rsvdz, g.value.low, g.value.high) == (I.HvRegisterName.SIMP, 0, 0x5001, 0)
    assert I.HV_REGISTER_ASSOC.parse(bytes(4) + b"\x01" + bytes(27)).rsvdz == 1


def test_register_names() -> None:
    expected = {
        "HYPERCALL": 0x90001,
        "GUEST_OS_ID": 0x90002,
        "VP_INDEX": 0x90003,
        "TIME_REF_COUNT": 0x90004,
        "VP_ASSIST_PAGE": 0x90013,
        "REFERENCE_TSC": 0x90017,
        "SINT0": 0xA0000,
        "SINT15": 0xA000F,
        "SCONTROL": 0xA0010,
        "SIEFP": 0xA0012,
        "SIMP": 0xA0013,
        "EOM": 0xA0014,
        "STIMER0_CONFIG": 0xB0000,
        "STIMER0_COUNT": 0xB0001,
        "STIMER3_CONFIG": 0xB0006,
        "STIMER3_COUNT": 0xB0007,
        "GUEST_CRASH_P0": 0x210,
        "GUEST_CRASH_CTL": 0x215,
    }
    assert {n: int(I.HvRegisterName[n]) for n in expected} == expected


def test_register_msr_map() -> None:
    m = I.REGISTER_MSR
    assert m[I.HvRegisterName.GUEST_OS_ID] == HvMsr.GUEST_OS_ID == 0x40000000
    assert m[I.HvRegisterName.SINT5] == 0x40000095
    assert m[I.HvRegisterName.STIMER2_COUNT] == 0x400000B5
    assert m[I.HvRegisterName.STIMER1_CONFIG] == 0x400000B2
    assert m[I.HvRegisterName.GUEST_CRASH_CTL] == 0x40000105
    assert m[I.HvRegisterName.SIMP] == 0x40000083
    assert I.HvRegisterName.PRIVILEGES_AND_FEATURES_INFO not in m
