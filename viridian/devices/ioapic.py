"""The I/O APIC at 0xFEC00000 (Intel 82093AA data sheet), engine-free: 24 input pins, IOREGSEL/IOWIN, the EOI
register of version 0x20 I/O APICs, redirection table, edge and level pins (Remote IRR, EOI broadcast).

Registers (82093AA §3.1-3.2): IOREGSEL +0x00 (8-bit index), IOWIN +0x10 (32-bit data), EOI +0x40 (write a
vector: as if the local APICs had broadcast its EOI; QEMU offers it on version 0x20). Indirect: 0x00 ID (27:24),
0x01 VER (0x00170020: version 0x20 like QEMU's user-space I/O APIC, 24 entries), 0x02 ARB (reads the ID, QEMU),
0x10 + 2n / 0x11 + 2n the low/high dword of redirection entry n.

Entry (82093AA §3.2.4): vector 7:0, delivery mode 10:8, destination mode 11, delivery status 12 (read-only,
always idle here), polarity 13, Remote IRR 14 (read-only), trigger 15, mask 16, destination 63:56. Pins are
active-high as every PC ISA source is; the polarity bit is kept but not applied (QEMU does the same).
Edge pins: a rising edge on an unmasked pin is delivered; one on a masked pin is lost (§3.2.4 "Interrupt Mask").
Level pins: while the line is high and Remote IRR is clear the interrupt is delivered and Remote IRR set; the
EOI of that vector (local APIC broadcast, or the EOI register) clears Remote IRR and delivers again if the line
is still high. Rewriting an entry as edge clears its Remote IRR (QEMU ``ioapic_fix_edge_remote_irr``).

Delivery goes to the local APICs through ``deliver(dest, logical, mode, vector, level)``, which the platform
implements with the :class:`~viridian.devices.apic_bus.ApicBus` (physical/logical destinations, lowest priority).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

BASE = 0xFEC0_0000
SIZE = 0x1000
PINS = 24
VERSION = 0x20
REG_ID, REG_VER, REG_ARB = 0x00, 0x01, 0x02
IOREGSEL, IOWIN, IOEOI = 0x00, 0x10, 0x40

VECTOR = 0xFF
DELIVERY_MODE = 0x700
DEST_LOGICAL = 1 << 11
DELIVERY_STATUS = 1 << 12
POLARITY_LOW = 1 << 13
REMOTE_IRR = 1 << 14
TRIGGER_LEVEL = 1 << 15
MASKED = 1 << 16
RO_BITS = DELIVERY_STATUS | REMOTE_IRR
RESET_ENTRY = MASKED  # 82093AA §3.2.4: every entry masked after reset
MASK32 = 0xFFFF_FFFF

Deliver = Callable[[int, bool, int, int, bool], bool]  # (dest, logical, mode, vector, level) -> accepted


class IoApic:
    """24-pin I/O APIC; ``set_irq(pin, level)`` drives an input pin (GSI = pin)."""

    def __init__(self, deliver: Deliver | None = None) -> None:
        self.deliver = deliver
        self.reset()

    def reset(self) -> None:
        self.id = 0
        self.regsel = 0
        self.entries = [RESET_ENTRY] * PINS
        self.lines = 0  # input levels
        self.irr = 0  # requests not yet delivered (edge latched / level asserted)
        self.delivered = 0  # interrupts sent (statistics)

    # -- pins ------------------------------------------------------------------------------------------------
    def set_irq(self, pin: int, level: bool) -> None:
        if not 0 <= pin < PINS:
            return
        bit = 1 << pin
        entry = self.entries[pin]
        rising = level and not self.lines & bit
        self.lines = self.lines | bit if level else self.lines & ~bit
        if entry & TRIGGER_LEVEL:
            self.irr = self.irr | bit if level else self.irr & ~bit
        elif rising and not entry & MASKED:
            self.irr |= bit
        self._service()

    def pin_enabled(self, pin: int) -> bool:
        return 0 <= pin < PINS and not self.entries[pin] & MASKED

    def _service(self) -> None:
        pending = self.irr
        while pending:
            low = pending & -pending
            pending ^= low
            pin = low.bit_length() - 1
            entry = self.entries[pin]
            if entry & MASKED:
                continue
            level = bool(entry & TRIGGER_LEVEL)
            if level:
                if entry & REMOTE_IRR:
                    continue
                self.entries[pin] = entry | REMOTE_IRR
            else:
                self.irr &= ~low
            self._send(entry, level)

    def _send(self, entry: int, level: bool) -> None:
        self.delivered += 1
        if self.deliver is not None:
            self.deliver(entry >> 56, bool(entry & DEST_LOGICAL), (entry & DELIVERY_MODE) >> 8, entry & VECTOR,
                         level)

    def eoi(self, vector: int) -> None:
        """EOI of a level-triggered ``vector`` (local APIC broadcast, or the EOI register): Remote IRR of every
        entry with that vector clears; a line still high is delivered again."""
        for pin, entry in enumerate(self.entries):
            if entry & VECTOR == vector and entry & REMOTE_IRR:
                self.entries[pin] = entry & ~REMOTE_IRR
        self._service()

    # -- MMIO --------------------------------------------------------------------------------------------------
    def mmio_read(self, offset: int, size: int) -> int:
        if offset == IOREGSEL:
            return self.regsel
        if offset == IOWIN and size == 4:  # QEMU honours only 32-bit window accesses
            return self._read_reg(self.regsel)
        return 0

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        if offset == IOREGSEL:
            self.regsel = value & 0xFF
        elif offset == IOWIN and size == 4:
            self._write_reg(self.regsel, value & MASK32)
        elif offset == IOEOI and VERSION >= 0x20:
            self.eoi(value & 0xFF)

    def _read_reg(self, index: int) -> int:
        if index in (REG_ID, REG_ARB):
            return self.id << 24
        if index == REG_VER:
            return (PINS - 1) << 16 | VERSION
        n = (index - 0x10) >> 1
        if 0x10 <= index < 0x10 + 2 * PINS:
            return (self.entries[n] >> (32 if index & 1 else 0)) & MASK32
        return MASK32 if index >= 0x10 + 2 * PINS else 0

    def _write_reg(self, index: int, value: int) -> None:
        if index == REG_ID:
            self.id = (value >> 24) & 0xF
            return
        if not 0x10 <= index < 0x10 + 2 * PINS:
            return  # VER and ARB are read-only
        n = (index - 0x10) >> 1
        old = self.entries[n]
        if index & 1:
            new = (old & MASK32) | value << 32
        else:
            new = (old & ~MASK32) | (value & ~RO_BITS) | (old & RO_BITS)
            if not new & TRIGGER_LEVEL:
                new &= ~REMOTE_IRR
        self.entries[n] = new
        bit = 1 << n
        if new & TRIGGER_LEVEL:  # a level pin's request is its line
            self.irr = self.irr | bit if self.lines & bit else self.irr & ~bit
        self._service()

    # -- snapshots ----------------------------------------------------------------------------------------------
    def save_state(self) -> dict[str, Any]:
        return {"id": self.id, "regsel": self.regsel, "entries": list(self.entries), "lines": self.lines,
                "irr": self.irr}

    def load_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict):
            raise ValueError("I/O APIC state: not a mapping")
        entries = state.get("entries")
        if not isinstance(entries, list) or len(entries) != PINS or \
                not all(isinstance(e, int) and 0 <= e < 1 << 64 for e in entries):
            raise ValueError("I/O APIC state: bad entries")
        for k, hi in (("id", 0xF), ("regsel", 0xFF), ("lines", (1 << PINS) - 1), ("irr", (1 << PINS) - 1)):
            v = state.get(k)
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= hi:
                raise ValueError(f"I/O APIC state: bad {k}: {v!r}")
        self.id, self.regsel, self.lines, self.irr = state["id"], state["regsel"], state["lines"], state["irr"]
        self.entries = list(entries)


__all__ = ["BASE", "PINS", "SIZE", "VERSION", "IoApic"]
