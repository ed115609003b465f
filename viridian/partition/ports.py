"""Host-created ports and their connections (TLFS §11 "Ports and connections").

The model has no CreatePort/ConnectPort hypercalls for the guest: the host (a device model, a test)
creates a port and the connection the guest uses in one step, keyed by a 24-bit ConnectionId.

- Message port: HvPostMessage on the connection queues the message for SIM slot ``sint`` of
  ``target_vp`` (or, when ``handler`` is given, hands it to the host instead: guest -> host channels
  such as a VMBus control connection).
- Event port: HvSignalEvent sets flag ``flag_base + FlagNumber`` of SINT ``sint`` in the target
  VP's SIEF page.

The registry lives per partition. ``ports_of(partition)`` returns ``partition.ports`` when the
partition carries one, else a registry kept in a weak side table (the partition class is owned
elsewhere; the lead may add ``self.ports = PortRegistry(self)`` to Partition.__init__).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from viridian.partition.message_queue import SynicMessage
from viridian.tlfs.hypercalls import HV_EVENT_FLAGS_COUNT, HV_MESSAGE_PAYLOAD_SIZE, HV_SYNIC_SINT_COUNT
from viridian.tlfs.status import HvStatus

if TYPE_CHECKING:
    from viridian.partition.partition import Partition

CONNECTION_ID_MASK: Final = 0x00FFFFFF  # HV_CONNECTION_ID: 23:0 Id, 31:24 RsvdZ (TLFS §11.x)
MAX_PORTS: Final = 4096  # host-side sanity bound on the registry

# A host receiver of guest-posted messages: (message type, payload) -> status returned to the guest.
MessageHandler = Callable[[int, bytes], HvStatus]


@dataclass(frozen=True, slots=True)
class MessagePort:
    connection_id: int
    target_vp: int
    sint: int
    handler: MessageHandler | None = None


@dataclass(frozen=True, slots=True)
class EventPort:
    connection_id: int
    target_vp: int
    sint: int
    flag_base: int = 0
    flag_count: int = HV_EVENT_FLAGS_COUNT


Port = MessagePort | EventPort


class PortRegistry:
    """Connections of one partition, created and deleted by the host."""

    def __init__(self, partition: Partition) -> None:
        self._partition = weakref.ref(partition)
        self._ports: dict[int, Port] = {}

    @property
    def partition(self) -> Partition:
        part = self._partition()
        if part is None:
            raise RuntimeError("partition is gone")
        return part

    # -- host API -------------------------------------------------------------------------------------
    def create_message_port(
        self, connection_id: int, target_vp: int, sint: int, *, handler: MessageHandler | None = None
    ) -> MessagePort:
        """Messages posted to ``connection_id`` go to SIM slot ``sint`` of ``target_vp`` (or ``handler``)."""
        self._check(connection_id, target_vp, sint)
        port = MessagePort(connection_id, target_vp, sint, handler)
        self._ports[connection_id] = port
        return port

    def create_event_port(
        self, connection_id: int, target_vp: int, sint: int, flag_base: int = 0,
        flag_count: int = HV_EVENT_FLAGS_COUNT,
    ) -> EventPort:
        """Events signalled on ``connection_id`` set flags ``flag_base..flag_base+flag_count-1``."""
        self._check(connection_id, target_vp, sint)
        if flag_base < 0 or flag_count <= 0 or flag_base + flag_count > HV_EVENT_FLAGS_COUNT:
            raise ValueError(f"flags {flag_base}+{flag_count} outside 0..{HV_EVENT_FLAGS_COUNT}")
        port = EventPort(connection_id, target_vp, sint, flag_base, flag_count)
        self._ports[connection_id] = port
        return port

    def delete(self, connection_id: int) -> None:
        """Remove a connection; later calls on it answer INVALID_CONNECTION_ID."""
        self._ports.pop(connection_id, None)

    def lookup(self, connection_id: int) -> Port | None:
        return self._ports.get(connection_id)

    def __len__(self) -> int:
        return len(self._ports)

    def _check(self, connection_id: int, target_vp: int, sint: int) -> None:
        if connection_id & ~CONNECTION_ID_MASK or connection_id < 0:
            raise ValueError(f"connection id {connection_id:#x} is not 24-bit")
        if connection_id in self._ports:
            raise ValueError(f"connection id {connection_id:#x} already exists")
        if len(self._ports) >= MAX_PORTS:
            raise ValueError("too many ports")
        if not 0 <= target_vp < len(self.partition.vps):
            raise ValueError(f"no VP {target_vp}")
        if not 0 <= sint < HV_SYNIC_SINT_COUNT:
            raise ValueError(f"no SINT {sint}")

    # -- operations (hypercalls and host devices) ----------------------------------------------------------
    def post_message(self, connection_id: int, msg_type: int, payload: bytes) -> HvStatus:
        """TLFS HvPostMessage semantics once the input block is validated."""
        port = self._ports.get(connection_id)
        if port is None:
            return HvStatus.INVALID_CONNECTION_ID
        if not isinstance(port, MessagePort):
            return HvStatus.INVALID_PORT_ID  # TLFS: the port is not a message port
        if len(payload) > HV_MESSAGE_PAYLOAD_SIZE:
            return HvStatus.INVALID_PARAMETER
        if port.handler is not None:
            return port.handler(msg_type, payload)
        synic = self.partition.vps[port.target_vp].synic
        return synic.post_message(port.sint, SynicMessage(msg_type, payload, connection_id))

    def signal_event(self, connection_id: int, flag: int) -> HvStatus:
        """TLFS HvSignalEvent semantics once the input block is validated."""
        port = self._ports.get(connection_id)
        if port is None:
            return HvStatus.INVALID_CONNECTION_ID
        if not isinstance(port, EventPort):
            return HvStatus.INVALID_PORT_ID
        if not 0 <= flag < port.flag_count:
            return HvStatus.INVALID_PARAMETER
        synic = self.partition.vps[port.target_vp].synic
        status = synic.event_state(port.sint)
        if status == HvStatus.SUCCESS:
            synic.signal_event(port.sint, port.flag_base + flag)
        return status


_SIDE: weakref.WeakKeyDictionary[Partition, PortRegistry] = weakref.WeakKeyDictionary()


def ports_of(partition: Partition) -> PortRegistry:
    """The partition's port registry (``partition.ports`` if present, else created on first use)."""
    own = getattr(partition, "ports", None)
    if isinstance(own, PortRegistry):
        return own
    reg = _SIDE.get(partition)
    if reg is None:
        reg = _SIDE[partition] = PortRegistry(partition)
    return reg
