"""construct Structs of the guest-memory overlay pages and SynIC messages, plus their offsets.

Pages: reference TSC page, VP assist page, SynIC message page (SIM) and event-flags page (SIEF), each exactly
4096 bytes. All integers are little-endian. Register-like sub-fields (APIC assist word, message flags) are kept
as plain integers here; decode them with :mod:`viridian.tlfs.layouts` (``APIC_ASSIST``, ``MESSAGE_FLAGS``).
"""

from __future__ import annotations

from typing import Any

from construct import Array, Bytes, Int8ul, Int16ul, Int32ul, Int64sl, Int64ul, Struct

from viridian.tlfs.hypercalls import (
    HV_EVENT_FLAGS_COUNT,
    HV_MESSAGE_FLAG_PENDING,
    HV_MESSAGE_PAYLOAD_SIZE,
    HV_MESSAGE_SIZE,
    HV_PAGE_SIZE,
    HV_SYNIC_SINT_COUNT,
    HV_SYNIC_STIMER_COUNT,
    HvMessageType,
)

__all__ = [
    "HV_MESSAGE",
    "HV_MESSAGE_HEADER",
    "HV_MESSAGE_PAGE",
    "HV_NESTED_ENLIGHTENMENTS_CONTROL",
    "HV_REFERENCE_TSC_PAGE",
    "HV_SYNIC_EVENT_FLAGS",
    "HV_SYNIC_EVENT_FLAGS_PAGE",
    "HV_TIMER_MESSAGE_PAYLOAD",
    "HV_VIRTUALIZATION_FAULT_INFORMATION",
    "HV_VP_ASSIST_PAGE",
    "HV_VP_VTL_CONTROL",
    "build_message",
    "offset_of",
    "sief_area_offset",
    "sief_flag_position",
    "sim_slot_offset",
    "timer_expired_message",
]

# --- Reference TSC page: TLFS timers.md "Reference TSC Page" (HV_REFERENCE_TSC_PAGE) -----------------------
HV_REFERENCE_TSC_PAGE = Struct(
    "tsc_sequence" / Int32ul,  # 0 = page invalid, fall back to HV_X64_MSR_TIME_REF_COUNT
    "reserved1" / Int32ul,
    "tsc_scale" / Int64ul,  # ReferenceTime = ((tsc * tsc_scale) >> 64) + tsc_offset
    "tsc_offset" / Int64sl,
    "reserved2" / Array(509, Int64ul),
)
TSC_SEQUENCE_OFFSET = 0x00
TSC_SCALE_OFFSET = 0x08
TSC_OFFSET_OFFSET = 0x10

# --- VP assist page: TLFS datatypes/hv_vp_assist_page.md (HV_VP_ASSIST_PAGE) -------------------------------
# HV_VP_VTL_CONTROL (24 bytes): TLFS datatypes/hv_vp_vtl_control.md.
HV_VP_VTL_CONTROL = Struct(
    "entry_reason" / Int32ul,  # HV_VTL_ENTRY_REASON: 0 reserved, 1 VTL call, 2 interrupt
    "vina_status" / Int8ul,  # bit 0 VinaAsserted
    "rsvdz0" / Int8ul,
    "rsvdz1" / Int16ul,
    "vtl_return_x64_rax" / Int64ul,  # x86 view: Eax, Ecx, Edx, ReservedZ (u32 each)
    "vtl_return_x64_rcx" / Int64ul,
)
# HV_NESTED_ENLIGHTENMENTS_CONTROL (8 bytes): TLFS datatypes/hv_nested_enlightenments_control.md.
HV_NESTED_ENLIGHTENMENTS_CONTROL = Struct(
    "features" / Int32ul,  # bit 0 DirectHypercall, bit 1 VirtualizationException
    "hypercall_controls" / Int32ul,  # bit 0 InterPartitionCommunication
)
NESTED_FEATURE_DIRECT_HYPERCALL = 1 << 0
NESTED_FEATURE_VIRTUALIZATION_EXCEPTION = 1 << 1
NESTED_HYPERCALL_INTER_PARTITION_COMMUNICATION = 1 << 0
# HV_VIRTUALIZATION_FAULT_INFORMATION (16 bytes per the TLFS md; Linux reserves 40 bytes for it).
HV_VIRTUALIZATION_FAULT_INFORMATION = Struct(
    "parameter0" / Int16ul,
    "reserved0" / Int16ul,
    "code" / Int32ul,
    "parameter1" / Int64ul,
)
HV_VP_ASSIST_PAGE = Struct(
    "apic_assist" / Int32ul,  # HV_VIRTUAL_APIC_ASSIST: bit 0 NoEoiRequired (layouts.APIC_ASSIST)
    "rsvdz0" / Int32ul,
    "vtl_control" / HV_VP_VTL_CONTROL,
    "nested_control" / HV_NESTED_ENLIGHTENMENTS_CONTROL,
    "enlighten_vm_entry" / Int8ul,  # BOOLEAN
    "rsvdz1" / Bytes(7),
    "current_nested_vmcs" / Int64ul,  # HV_GPA
    "synthetic_time_unhalted_timer_expired" / Int8ul,  # BOOLEAN
    "rsvdz2" / Bytes(7),
    "virtualization_fault_information" / HV_VIRTUALIZATION_FAULT_INFORMATION,  # 16-byte aligned
    "rsvdz_tail" / Bytes(HV_PAGE_SIZE - 0x50),
)
VP_ASSIST_APIC_ASSIST_OFFSET = 0x00
VP_ASSIST_VTL_CONTROL_OFFSET = 0x08
VP_ASSIST_NESTED_CONTROL_OFFSET = 0x20
VP_ASSIST_ENLIGHTEN_VM_ENTRY_OFFSET = 0x28
VP_ASSIST_CURRENT_NESTED_VMCS_OFFSET = 0x30
VP_ASSIST_STIME_UNHALTED_TIMER_EXPIRED_OFFSET = 0x38
VP_ASSIST_VIRTUALIZATION_FAULT_OFFSET = 0x40

# --- SynIC messages: TLFS datatypes/hv_message.md (HV_MESSAGE, 256 bytes) ----------------------------------
HV_MESSAGE_HEADER = Struct(
    "message_type" / Int32ul,  # HvMessageType; 0 = slot empty; bit 31 = hypervisor-only types
    "payload_size" / Int8ul,  # <= 240
    "message_flags" / Int8ul,  # bit 0 MessagePending (layouts.MESSAGE_FLAGS)
    "reserved" / Int16ul,
    "origination_id" / Int64ul,  # Sender / Port (HV_PARTITION_ID or HV_PORT_ID)
)
HV_MESSAGE = Struct(  # flat: the header fields, then the payload
    *HV_MESSAGE_HEADER.subcons,
    "payload" / Bytes(HV_MESSAGE_PAYLOAD_SIZE),  # UINT64 Payload[30]
)
MESSAGE_TYPE_OFFSET = 0
MESSAGE_PAYLOAD_SIZE_OFFSET = 4
MESSAGE_FLAGS_OFFSET = 5
MESSAGE_ORIGINATION_ID_OFFSET = 8
MESSAGE_PAYLOAD_OFFSET = 16

# SIM page = HV_MESSAGE[16], slot x for SINTx: TLFS inter-partition-communication.md "SIM Page".
HV_MESSAGE_PAGE = Struct("sint_message" / Array(HV_SYNIC_SINT_COUNT, HV_MESSAGE))

# SIEF page = 16 x 256-byte flag arrays (2048 flags per SINT): TLFS inter-partition-communication.md "SIEF Page".
HV_SYNIC_EVENT_FLAGS = Bytes(HV_EVENT_FLAGS_COUNT // 8)
HV_SYNIC_EVENT_FLAGS_PAGE = Struct("sint_event_flags" / Array(HV_SYNIC_SINT_COUNT, HV_SYNIC_EVENT_FLAGS))

# Timer-expired message payload (HvMessageTimerExpired): TLFS datatypes/hv_timer_message_payload.md.
HV_TIMER_MESSAGE_PAYLOAD = Struct(
    "timer_index" / Int32ul,
    "reserved" / Int32ul,
    "expiration_time" / Int64ul,  # reference time (100 ns) at which the timer expired
    "delivery_time" / Int64ul,  # reference time (100 ns) at which the message was delivered
)
TIMER_MESSAGE_PAYLOAD_SIZE = 24

for _struct, _size in (
    (HV_REFERENCE_TSC_PAGE, HV_PAGE_SIZE),
    (HV_VP_VTL_CONTROL, 24),
    (HV_NESTED_ENLIGHTENMENTS_CONTROL, 8),
    (HV_VIRTUALIZATION_FAULT_INFORMATION, 16),
    (HV_VP_ASSIST_PAGE, HV_PAGE_SIZE),
    (HV_MESSAGE_HEADER, 16),
    (HV_MESSAGE, HV_MESSAGE_SIZE),
    (HV_MESSAGE_PAGE, HV_PAGE_SIZE),
    (HV_SYNIC_EVENT_FLAGS_PAGE, HV_PAGE_SIZE),
    (HV_TIMER_MESSAGE_PAYLOAD, TIMER_MESSAGE_PAYLOAD_SIZE),
):
    assert _struct.sizeof() == _size, (_struct, _struct.sizeof(), _size)


def offset_of(struct: Any, name: str) -> int:
    """Byte offset of top-level field ``name`` in a fixed-size construct Struct (KeyError if absent)."""
    offset = 0
    for sub in struct.subcons:
        if sub.name == name:
            return offset
        offset += int(sub.sizeof())
    raise KeyError(name)


def _check_sint(sint: int) -> None:
    if not 0 <= sint < HV_SYNIC_SINT_COUNT:
        raise ValueError(f"SINT index {sint} out of range 0..{HV_SYNIC_SINT_COUNT - 1}")


def sim_slot_offset(sint: int) -> int:
    """Byte offset within the SIM page of the HV_MESSAGE slot for SINT ``sint`` (0..15)."""
    _check_sint(sint)
    return sint * HV_MESSAGE_SIZE


def sief_area_offset(sint: int) -> int:
    """Byte offset within the SIEF page of the 256-byte event-flag array of SINT ``sint`` (0..15)."""
    _check_sint(sint)
    return sint * (HV_EVENT_FLAGS_COUNT // 8)


def sief_flag_position(sint: int, flag: int) -> tuple[int, int]:
    """``(byte offset within the SIEF page, bit within that byte)`` of event flag ``flag`` (0..2047) of ``sint``."""
    if not 0 <= flag < HV_EVENT_FLAGS_COUNT:
        raise ValueError(f"event flag {flag} out of range 0..{HV_EVENT_FLAGS_COUNT - 1}")
    return sief_area_offset(sint) + flag // 8, flag % 8


def build_message(
    message_type: int, payload: bytes = b"", origination_id: int = 0, pending: bool = False
) -> bytes:
    """The 256 bytes of an HV_MESSAGE (payload zero-padded to 240 bytes; payload_size = len(payload))."""
    if len(payload) > HV_MESSAGE_PAYLOAD_SIZE:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {HV_MESSAGE_PAYLOAD_SIZE}")
    message = {
        "message_type": message_type,
        "payload_size": len(payload),
        "message_flags": HV_MESSAGE_FLAG_PENDING if pending else 0,
        "reserved": 0,
        "origination_id": origination_id,
        "payload": payload.ljust(HV_MESSAGE_PAYLOAD_SIZE, b"\0"),
    }
    return bytes(HV_MESSAGE.build(message))


def timer_expired_message(timer_index: int, expiration_time: int, delivery_time: int) -> bytes:
    """The HvMessageTimerExpired message a synthetic timer posts to its SINTx slot (TLFS timers.md)."""
    if not 0 <= timer_index < HV_SYNIC_STIMER_COUNT:
        raise ValueError(f"timer index {timer_index} out of range 0..{HV_SYNIC_STIMER_COUNT - 1}")
    payload = HV_TIMER_MESSAGE_PAYLOAD.build(
        {
            "timer_index": timer_index,
            "reserved": 0,
            "expiration_time": expiration_time,
            "delivery_time": delivery_time,
        }
    )
    return build_message(HvMessageType.TIMER_EXPIRED, bytes(payload))
