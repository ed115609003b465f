"""The small interface every PC platform device follows (engine-free; the machine wires devices through it).

* Time: a device reads virtual time through ``now() -> int`` in TSC ticks of the partition clock
  (:class:`viridian.clock.VirtualClock`, ``tsc_hz`` ticks per second). Counters (PIT, PM timer, HPET) are computed
  from that time when read; nothing ticks in the background.
* Interrupts: a device drives its ISA IRQ line through :class:`IrqSink` ``set_irq(irq, level)``. Edge devices raise
  and lower the line (a rising edge is what the 8259A/I/O APIC latch); level devices hold it while asserted.
* Deadlines: a device whose interrupt output changes with time reports ``next_deadline() -> int | None`` (the TSC
  tick of its next output change, or None) and brings itself up to ``now`` in ``advance(now)`` (raising the IRQ
  edges that fell due, in order). The machine calls ``advance`` before any guest access to the device and when the
  deadline is reached, so guests see the same values and interrupts whatever the scheduling quanta are.
* Ports and MMIO: ``read(port, size) -> int`` / ``write(port, size, value)`` as the port bus's PortDevice;
  MMIO devices take ``mmio_read(offset, size)`` / ``mmio_write(offset, size, value)`` relative to their base.
* Snapshots: ``save_state() -> dict`` of plain JSON data and ``load_state(state: dict) -> None`` that validates every
  field (type and range) and raises ``ValueError`` on anything wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

Now = Callable[[], int]


class IrqSink(Protocol):
    """Where a device's ISA IRQ line goes (the platform routes it to the PIC and the I/O APIC)."""

    def set_irq(self, irq: int, level: bool) -> None: ...


class TimedDevice(Protocol):
    def next_deadline(self) -> int | None: ...
    def advance(self, now: int) -> None: ...


class StatefulDevice(Protocol):
    def save_state(self) -> dict[str, Any]: ...
    def load_state(self, state: dict[str, Any]) -> None: ...


class NullIrq:
    """An IrqSink that records nothing (unit tests and devices used without a platform)."""

    def set_irq(self, irq: int, level: bool) -> None:
        return None


__all__ = ["IrqSink", "Now", "NullIrq", "StatefulDevice", "TimedDevice"]
