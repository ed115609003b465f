"""SynIC (TLFS §11): per-VP message/event pages, SINTs, message queues and synthetic timers.

Skeleton — filled by the SynIC work item."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from viridian.partition.vp import VirtualProcessor


class SynIC:
    def __init__(self, vp: VirtualProcessor) -> None:
        self.vp = vp

    def reset(self) -> None:
        pass

    def poll(self, now: int) -> int | None:
        """Deliver what is due at reference time ``now``; return the next deadline (or None)."""
        return None
