"""The PC's 8259A programmable interrupt controller pair (master 0x20/0x21, slave 0xA0/0xA1) with the PIIX ELCR
(0x4D0/0x4D1), engine-free.

Sources: Intel 8259A data sheet (ICW1-4, OCW1-3, "Interrupt Sequence", "Priority" and "Special Mask Mode"
sections) and the PIIX/PIIX4 ELCR registers; where the data sheet leaves a choice, QEMU's i8259 is followed
(noted at the place). The slave's INT output drives the master's IR2 (cascade). Edge-triggered inputs latch
IRR on a rising edge (the input must go low and high again for the next request); ELCR level inputs follow the
line. ``intr`` is the master's INT output; :meth:`PicPair.inta` is the CPU's interrupt acknowledge and returns
the vector (spurious IRQ 7 / IRQ 15 when the request went away, data sheet "Interrupt Sequence" note).

Hand-off state (:meth:`PicPair.bios_init`): what SeaBIOS leaves before it starts a ``-kernel``: both chips
initialised (ICW4 needed, cascade, 8086 mode), vector bases 0x08 and 0x70, and -- unlike SeaBIOS, which unmasks
its own timer/keyboard/cascade lines -- every line masked, so a guest that never touches the PIC gets nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

MASTER_PORTS = (0x20, 0x21)
SLAVE_PORTS = (0xA0, 0xA1)
ELCR_PORTS = (0x4D0, 0x4D1)
ELCR_MASKS = (0xF8, 0xDE)  # PIIX: IRQ 0, 1, 2, 8, 13 are always edge (QEMU i8259 elcr_mask)

_FIELDS = ("irr", "imr", "isr", "last_irr", "priority_add", "base", "init_state", "init4", "single", "read_isr",
           "poll", "special_mask", "auto_eoi", "rotate_on_aeoi", "sfnm", "elcr")


class Pic8259:
    """One 8259A. Registers are 8-bit masks indexed by IR line."""

    def __init__(self, elcr_mask: int, master: bool) -> None:
        self.elcr_mask, self.master = elcr_mask, master
        self.elcr = self.irr = 0
        self.reset()

    def reset(self) -> None:
        """ICW1 semantics (data sheet "Initialization Command Words"): IMR, ISR, IRR edge memory cleared,
        priority IR0 highest, special mask off, status read = IRR. QEMU also clears IMR and keeps ELCR."""
        self.last_irr = 0
        self.irr &= self.elcr  # a level request whose line is high stays (QEMU pic_init_reset)
        self.imr = self.isr = 0
        self.priority_add = 0
        self.base = 0
        self.init_state = 0  # 0 operating; 1 expects ICW2; 2 ICW3; 3 ICW4
        self.init4 = self.single = self.read_isr = self.poll = self.special_mask = False
        self.auto_eoi = self.rotate_on_aeoi = self.sfnm = False

    # -- inputs ---------------------------------------------------------------------------------------
    def set_irq(self, irq: int, level: bool) -> None:
        """Drive IR line ``irq``: level mode (ELCR) follows the line, edge mode latches a rising edge."""
        bit = 1 << irq
        if self.elcr & bit:
            if level:
                self.irr |= bit
                self.last_irr |= bit
            else:
                self.irr &= ~bit
                self.last_irr &= ~bit
        elif level:
            if not self.last_irr & bit:
                self.irr |= bit
            self.last_irr |= bit
        else:
            self.last_irr &= ~bit

    # -- priority resolution ("Priority" / "Fully Nested Mode") ---------------------------------------
    def _priority(self, mask: int) -> int:
        """Priority level (0 highest) of the highest-priority line in ``mask``; 8 = none."""
        if not mask & 0xFF:
            return 8
        p = 0
        while not mask & (1 << ((p + self.priority_add) & 7)):
            p += 1
        return p

    def pending(self) -> int:
        """The IR line INT is raised for, or -1: the highest unmasked request above every in-service level
        (special mask mode: masked in-service levels do not block; special fully nested: IR2 never blocks)."""
        p = self._priority(self.irr & ~self.imr)
        if p == 8:
            return -1
        mask = self.isr
        if self.special_mask:
            mask &= ~self.imr
        if self.sfnm and self.master:
            mask &= ~(1 << 2)
        return (p + self.priority_add) & 7 if p < self._priority(mask) else -1

    def intack(self, irq: int) -> None:
        """INTA on line ``irq``: ISR set (not in AEOI mode; rotate on AEOI rotates), an edge request is
        consumed; a level request stays in IRR while its line is high (QEMU pic_intack)."""
        bit = 1 << irq
        if self.auto_eoi:
            if self.rotate_on_aeoi:
                self.priority_add = (irq + 1) & 7
        else:
            self.isr |= bit
        if not self.elcr & bit:
            self.irr &= ~bit

    # -- registers --------------------------------------------------------------------------------------
    def write(self, a0: int, value: int) -> None:
        """A0 = 0: ICW1 (bit 4), OCW3 (bits 4:3 = 01) or OCW2; A0 = 1: ICW2-4 in sequence, else OCW1 (IMR)."""
        value &= 0xFF
        if a0 == 0:
            if value & 0x10:  # ICW1; LTIM (bit 3) is ignored: ELCR decides the trigger mode on a PC
                self.reset()
                self.init_state, self.init4, self.single = 1, bool(value & 1), bool(value & 2)
            elif value & 0x08:  # OCW3
                if value & 0x04:
                    self.poll = True
                if value & 0x02:
                    self.read_isr = bool(value & 1)
                if value & 0x40:
                    self.special_mask = bool(value & 0x20)
            else:
                self._ocw2(value)
            return
        if self.init_state == 0:
            self.imr = value  # OCW1
        elif self.init_state == 1:  # ICW2: T7-T3 of the vector (8086 mode)
            self.base = value & 0xF8
            self.init_state = (3 if self.init4 else 0) if self.single else 2
        elif self.init_state == 2:  # ICW3: cascade wiring is fixed on a PC
            self.init_state = 3 if self.init4 else 0
        else:  # ICW4: AEOI (bit 1), special fully nested (bit 4); 8086 mode assumed
            self.auto_eoi, self.sfnm = bool(value & 2), bool(value & 0x10)
            self.init_state = 0

    def _ocw2(self, value: int) -> None:
        """OCW2 R/SL/EOI (bits 7:5): 001 non-specific EOI, 011 specific, 101 rotate on non-specific, 111 rotate
        on specific, 110 set priority, 100/000 set/clear rotate in AEOI, 010 no operation."""
        cmd = value >> 5
        if cmd in (0, 4):
            self.rotate_on_aeoi = bool(cmd >> 2)
        elif cmd in (1, 5):
            p = self._priority(self.isr)
            if p != 8:
                irq = (p + self.priority_add) & 7
                self.isr &= ~(1 << irq)
                if cmd == 5:
                    self.priority_add = (irq + 1) & 7
        elif cmd in (3, 7):
            irq = value & 7
            self.isr &= ~(1 << irq)
            if cmd == 7:
                self.priority_add = (irq + 1) & 7
        elif cmd == 6:
            self.priority_add = (value + 1) & 7

    def read(self, a0: int) -> int:
        """Poll command result (0x80 | level, acknowledging it; 0 when nothing is pending, QEMU), else IRR/ISR
        (A0 = 0, per OCW3) or IMR (A0 = 1)."""
        if self.poll:
            self.poll = False
            irq = self.pending()
            if irq < 0:
                return 0
            self.intack(irq)
            return 0x80 | irq
        if a0 == 0:
            return self.isr if self.read_isr else self.irr
        return self.imr

    def save_state(self) -> dict[str, Any]:
        return {k: int(getattr(self, k)) for k in _FIELDS}

    def load_state(self, state: dict[str, Any]) -> None:
        for k in _FIELDS:
            v = state.get(k)
            hi = 3 if k == "init_state" else 7 if k == "priority_add" else 1 if k in _BOOLS else 0xFF
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= hi:
                raise ValueError(f"8259A state: bad {k}: {v!r}")
        for k in _FIELDS:
            setattr(self, k, bool(state[k]) if k in _BOOLS else state[k])
        self.elcr &= self.elcr_mask


_BOOLS = frozenset({"init4", "single", "read_isr", "poll", "special_mask", "auto_eoi", "rotate_on_aeoi", "sfnm"})


class PicPair:
    """Master and slave 8259A, cascaded on the master's IR2, plus the ELCR. ``on_intr(level)`` is called when
    the master's INT output changes (the platform routes it to the BSP's LINT0)."""

    def __init__(self, on_intr: Callable[[bool], None] | None = None) -> None:
        self.master = Pic8259(ELCR_MASKS[0], master=True)
        self.slave = Pic8259(ELCR_MASKS[1], master=False)
        self.on_intr = on_intr
        self.intr = False
        self.ports = (*MASTER_PORTS, *SLAVE_PORTS, *ELCR_PORTS)

    def bios_init(self) -> None:
        """The hand-off state (module docstring): ICW1 0x11, ICW2 0x08/0x70, ICW3 0x04/0x02, ICW4 0x01; IMR 0xFF."""
        for chip, base, icw3 in ((self.master, 0x08, 0x04), (self.slave, 0x70, 0x02)):
            for a0, v in ((0, 0x11), (1, base), (1, icw3), (1, 0x01), (1, 0xFF)):
                chip.write(a0, v)
        self._update()

    # -- IrqSink ------------------------------------------------------------------------------------------
    def set_irq(self, irq: int, level: bool) -> None:
        """ISA IRQ 0-7 on the master, 8-15 on the slave (IRQ 2 is the cascade: never a device line)."""
        if not 0 <= irq < 16 or irq == 2:
            return
        (self.master if irq < 8 else self.slave).set_irq(irq & 7, level)
        self._update()

    def _update(self) -> None:
        self.master.set_irq(2, self.slave.pending() >= 0)
        intr = self.master.pending() >= 0
        if intr != self.intr:
            self.intr = intr
            if self.on_intr is not None:
                self.on_intr(intr)

    # -- the CPU side ---------------------------------------------------------------------------------------
    def inta(self) -> int:
        """Interrupt acknowledge (data sheet "Interrupt Sequence"): the vector of the highest request; a
        request from IR2 is answered by the slave; none -> the spurious vector (base + 7) with no ISR bit."""
        irq = self.master.pending()
        if irq < 0:
            vector = self.master.base + 7
        elif irq == 2:
            self.master.intack(2)
            irq2 = self.slave.pending()
            if irq2 >= 0:
                self.slave.intack(irq2)
            vector = self.slave.base + (irq2 if irq2 >= 0 else 7)
        else:
            self.master.intack(irq)
            vector = self.master.base + irq
        self._update()
        return vector

    # -- ports ----------------------------------------------------------------------------------------------
    def read(self, port: int, size: int) -> int:
        if port in ELCR_PORTS:
            return (self.master if port == 0x4D0 else self.slave).elcr
        chip = self.master if port in MASTER_PORTS else self.slave
        value = chip.read(port & 1)
        self._update()
        return value

    def write(self, port: int, size: int, value: int) -> None:
        if port in ELCR_PORTS:  # PIIX ELCR1/ELCR2: bit n = 1 -> IRQ n level-triggered
            chip = self.master if port == 0x4D0 else self.slave
            chip.elcr = value & chip.elcr_mask
        else:
            (self.master if port in MASTER_PORTS else self.slave).write(port & 1, value)
        self._update()

    def line_enabled(self, irq: int) -> bool:
        """Whether a request on ISA ``irq`` could reach INT now (its IMR bit, and IR2's for the slave)."""
        if irq < 8:
            return not self.master.imr >> irq & 1
        return not self.slave.imr >> (irq - 8) & 1 and not self.master.imr >> 2 & 1

    def save_state(self) -> dict[str, Any]:
        return {"master": self.master.save_state(), "slave": self.slave.save_state(), "intr": self.intr}

    def load_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or not isinstance(state.get("intr"), bool):
            raise ValueError("8259A pair state: bad intr")
        for name in ("master", "slave"):
            if not isinstance(state.get(name), dict):
                raise ValueError(f"8259A pair state: missing {name}")
        self.master.load_state(state["master"])
        self.slave.load_state(state["slave"])
        self.intr = state["intr"]


__all__ = ["ELCR_PORTS", "MASTER_PORTS", "SLAVE_PORTS", "Pic8259", "PicPair"]
