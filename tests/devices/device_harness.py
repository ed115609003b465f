"""What the PC device tests share (pc_api.py's interface seen from outside): a settable virtual clock and an
IRQ line recorder."""

from __future__ import annotations


class Clock:
    """``now()`` for a device: the TSC tick the test sets in ``t``."""

    def __init__(self) -> None:
        self.t = 0

    def __call__(self) -> int:
        return self.t


class Lines:
    """An IrqSink that records every (irq, level) the device drives, in order."""

    def __init__(self) -> None:
        self.log: list[tuple[int, bool]] = []

    def set_irq(self, irq: int, level: bool) -> None:
        self.log.append((irq, level))
