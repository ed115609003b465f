"""APIC assist / EOI avoidance through the VP assist page (TLFS §10.x "Virtual interrupts").

Skeleton — filled by the APIC-assist work item."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from viridian.partition.vp import VirtualProcessor


class ApicAssist:
    def __init__(self, vp: VirtualProcessor) -> None:
        self.vp = vp

    def reset(self) -> None:
        pass

    def before_run(self) -> None:
        pass

    def after_run(self) -> None:
        pass
