"""HvPostMessage (0x005C) and HvSignalEvent (0x005D) (TLFS §11 "Inter-partition communication").

Where KVM and the TLFS differ we follow the TLFS and say so:
- Unknown connection: TLFS INVALID_CONNECTION_ID (KVM SignalEvent answers INVALID_PORT_ID).
- SignalEvent FlagNumber (bits 47:32 of the fast input): a real flag index here (TLFS); KVM only
  supports flag 0 and answers INVALID_PORT_ID otherwise.
- RsvdZ input bits (ConnectionId 31:24, the reserved words): INVALID_HYPERCALL_INPUT (TLFS §3.7
  rule for reserved input; KVM does the same for SignalEvent).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Final

from viridian.abi.dispatch import HypercallCall
from viridian.partition import gates
from viridian.partition.hypercalls import HV_CALLS
from viridian.partition.ports import CONNECTION_ID_MASK, ports_of
from viridian.tlfs.cpuid import PartitionPrivilege
from viridian.tlfs.hypercalls import HV_MESSAGE_PAYLOAD_SIZE, HV_MESSAGE_TYPE_HYPERVISOR_BIT, HvCall
from viridian.tlfs.status import HvStatus

if TYPE_CHECKING:
    from viridian.partition.vp import VirtualProcessor

# HV_INPUT_POST_MESSAGE: ConnectionId u32, Reserved u32, MessageType u32, PayloadSize u32, Message[240].
POST_HEADER: Final = struct.Struct("<IIII")
POST_INPUT_SIZE: Final = POST_HEADER.size + HV_MESSAGE_PAYLOAD_SIZE  # 256
# HV_INPUT_SIGNAL_EVENT: ConnectionId u32, FlagNumber u16, RsvdZ u16.
SIGNAL_INPUT: Final = struct.Struct("<IHH")


@HV_CALLS.simple(
    HvCall.POST_MESSAGE, input_size=POST_INPUT_SIZE, fast=False,
    gate=gates.privilege(PartitionPrivilege.POST_MESSAGES), cite="TLFS §11 HvPostMessage",
)
def post_message(vp: VirtualProcessor, call: HypercallCall) -> HvStatus:
    # TLFS HvPostMessage: memory-based only; validate, then queue on the connection's port.
    conn, reserved, msg_type, size = POST_HEADER.unpack_from(call.header)
    if conn & ~CONNECTION_ID_MASK or reserved:
        return HvStatus.INVALID_HYPERCALL_INPUT
    if msg_type == 0 or msg_type & HV_MESSAGE_TYPE_HYPERVISOR_BIT or size > HV_MESSAGE_PAYLOAD_SIZE:
        return HvStatus.INVALID_PARAMETER
    payload = call.header[POST_HEADER.size : POST_HEADER.size + size]
    return ports_of(vp.partition).post_message(conn, msg_type, payload)


@HV_CALLS.simple(
    HvCall.SIGNAL_EVENT, input_size=SIGNAL_INPUT.size, fast=True,
    gate=gates.privilege(PartitionPrivilege.SIGNAL_EVENTS), cite="TLFS §11 HvSignalEvent",
)
def signal_event(vp: VirtualProcessor, call: HypercallCall) -> HvStatus:
    # TLFS HvSignalEvent: set the port's flag in the target SIEF; interrupt only if it was clear.
    conn, flag, reserved = SIGNAL_INPUT.unpack_from(call.header)
    if conn & ~CONNECTION_ID_MASK or reserved:
        return HvStatus.INVALID_HYPERCALL_INPUT
    return ports_of(vp.partition).signal_event(conn, flag)
