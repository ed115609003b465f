"""SynIC messages and bounded per-(VP, SINT) queues (TLFS §11.x "SynIC message queues").

A message is kept host side as (type, origin, payload) and encoded into the 256-byte HV_MESSAGE
layout only when copied into the SIM page slot. Queues are bounded: a hostile guest (or a runaway
host device) can never grow host memory without limit; a full queue reports
HV_STATUS_INSUFFICIENT_BUFFERS upstream, like a port's 16 message buffers (TLFS HvPostMessage).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

from viridian.state import Fields, StateError, check_int
from viridian.tlfs.hypercalls import HV_MESSAGE_PAYLOAD_SIZE
from viridian.tlfs.pages import HV_MESSAGE_HEADER, MESSAGE_FLAGS_OFFSET, MESSAGE_TYPE_OFFSET

# HV_MESSAGE (TLFS datatypes/hv_message.md): MessageType u32 @0, PayloadSize u8 @4, MessageFlags u8 @5
# (bit 0 MessagePending), Reserved u16 @6, OriginationId u64 @8, Payload[240] @16.
TYPE_OFFSET: Final = MESSAGE_TYPE_OFFSET
FLAGS_OFFSET: Final = MESSAGE_FLAGS_OFFSET
DEFAULT_QUEUE_DEPTH: Final = 16  # TLFS HvPostMessage: "a port has 16 message buffers"


class Delivery(Enum):
    """Outcome of one attempt to copy a message into its SIM slot."""

    DELIVERED = "delivered"  # copied; interrupt raised unless masked/polling
    BUSY = "busy"  # slot occupied: MessagePending set in it, message stays queued
    DROPPED = "dropped"  # slot occupied and the sender asked for no retry (periodic timer tick)
    UNAVAILABLE = "unavailable"  # SynIC or SIM disabled / SIM outside RAM: stays queued


@dataclass(frozen=True, slots=True)
class SynicMessage:
    """One message as queued: ``payload`` is at most 240 bytes, ``msg_type`` non-zero."""

    msg_type: int
    payload: bytes = b""
    origin: int = 0  # OriginationId (port id for port messages, 0 for timers)

    def __post_init__(self) -> None:
        if not 0 < self.msg_type <= 0xFFFFFFFF:
            raise ValueError(f"message type {self.msg_type:#x} must be a non-zero u32")
        if len(self.payload) > HV_MESSAGE_PAYLOAD_SIZE:
            raise ValueError(f"payload of {len(self.payload)} bytes exceeds {HV_MESSAGE_PAYLOAD_SIZE}")

    def encode(self) -> bytes:
        """Header + PayloadSize bytes: exactly what is copied into the SIM slot (TLFS §11.x)."""
        header = HV_MESSAGE_HEADER.build(
            {
                "message_type": self.msg_type,
                "payload_size": len(self.payload),
                "message_flags": 0,
                "reserved": 0,
                "origination_id": self.origin & (1 << 64) - 1,
            }
        )
        return bytes(header) + self.payload


class MessageQueue:
    """A bounded FIFO of messages waiting for one SIM slot."""

    __slots__ = ("_items", "depth", "dropped")

    def __init__(self, depth: int = DEFAULT_QUEUE_DEPTH) -> None:
        self.depth = depth
        self._items: deque[SynicMessage] = deque()
        self.dropped = 0  # refused pushes (diagnostics)

    def push(self, msg: SynicMessage) -> bool:
        """Append ``msg``; False (and nothing stored) when the queue is full."""
        if len(self._items) >= self.depth:
            self.dropped += 1
            return False
        self._items.append(msg)
        return True

    def peek(self) -> SynicMessage | None:
        return self._items[0] if self._items else None

    def __getitem__(self, index: int) -> SynicMessage:
        return self._items[index]

    def pop(self) -> SynicMessage:
        return self._items.popleft()

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __iter__(self) -> Iterator[SynicMessage]:
        return iter(self._items)

    # -- snapshots (viridian.state) ----------------------------------------------------------------------
    def save_state(self) -> dict[str, Any]:
        return {"dropped": self.dropped,
                "items": [[m.msg_type, m.payload.hex(), m.origin] for m in self._items]}

    def load_state(self, f: Fields) -> None:
        """At most ``depth`` messages, each checked by :class:`SynicMessage` (non-zero u32 type, <= 240 bytes)."""
        items: deque[SynicMessage] = deque()
        for i, item in enumerate(f.seq("items", max_len=self.depth)):
            at = f"{f.where}.items[{i}]"
            if type(item) is not list or len(item) != 3 or type(item[1]) is not str \
                    or len(item[1]) > 2 * HV_MESSAGE_PAYLOAD_SIZE:
                raise StateError(f"{at}: expected [type, payload hex, origin]")
            try:
                payload = bytes.fromhex(item[1])
            except ValueError:
                raise StateError(f"{at}: payload is not hex") from None
            items.append(SynicMessage(check_int(item[0], 1, 0xFFFFFFFF, at), payload,
                                      check_int(item[2], 0, (1 << 64) - 1, at)))
        self.dropped, self._items = f.uint("dropped", 0, 1 << 63), items
