"""The PC's COM1 UART, a 16550A (National Semiconductor PC16550D data sheet), engine-free, with interrupts.

Registers at base+0..7: RBR/THR (DLL with LCR.DLAB), IER (DLM), IIR/FCR, LCR, MCR, LSR, MSR, SCR. Transmit is
instant: a THR write hands the byte out (``transmit``) and THR/TEMT are empty again at once, so LSR reads
0x60 unless received data or errors are pending. Nothing arrives from outside; data is received only in loopback
(MCR.LOOP), where THR writes go to the receiver instead of the line, as QEMU's serial.c does.

Interrupts (data sheet Table IV "Interrupt Control Functions"; semantics of QEMU hw/char/serial.c where the data
sheet leaves room): IIR reports the highest-priority pending source enabled in IER -- receiver line status
(OE/PE/FE/BI, cleared by reading LSR) > received data available (FIFO at its trigger level, or any byte without
FIFOs; cleared by reading RBR below it) > character timeout (FIFO data not read for 4 character times) > THR
empty > modem status (MSR deltas, cleared by reading MSR). THR empty is pending when THR empties (after each
write here), when IER.ETBEI goes 0->1 while THR is empty (QEMU; Linux's THRE test relies on it) and after a
transmit-FIFO reset; an IIR read that reports it and a THR write clear it. The IRQ (4 for COM1) follows "some
source pending", gated on the PC by MCR.OUT2 (the board's OUT2-enabled driver; in loopback OUT2 is looped back
and the pin is inactive, data sheet "MCR bit 4"); QEMU does not gate (``gate_out2=False`` gives its behaviour).

Hand-off state (QEMU serial_reset after SeaBIOS): IER 0, IIR 0x01, LCR 0x03, MCR 0, LSR 0x60, MSR 0xB0 (DCD,
DSR, CTS), FIFOs off, divisor 12 (9600 baud, never used: timing only for the receive timeout).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from viridian.devices.pc_api import IrqSink, Now, NullIrq
from viridian.state import Fields

COM1: Final = 0x3F8
COM1_IRQ: Final = 4
SERIAL_LIMIT: Final = 4 << 20  # bytes of serial output kept (the rest is counted, not stored)
FIFO_SIZE: Final = 16
UART_HZ: Final = 115_200  # divisor 1 (1.8432 MHz / 16)

IER_RDI, IER_THRI, IER_RLSI, IER_MSI = 1, 2, 4, 8
IIR_NONE, IIR_MSI, IIR_THRI, IIR_RDI, IIR_RLSI, IIR_CTI = 0x01, 0x00, 0x02, 0x04, 0x06, 0x0C
IIR_FIFO: Final = 0xC0
FCR_FE, FCR_RFR, FCR_XFR = 1, 2, 4
LCR_DLAB: Final = 0x80
MCR_DTR, MCR_RTS, MCR_OUT1, MCR_OUT2, MCR_LOOP = 1, 2, 4, 8, 16
LSR_DR, LSR_OE, LSR_PE, LSR_FE, LSR_BI, LSR_THRE, LSR_TEMT = 1, 2, 4, 8, 16, 32, 64
LSR_INT_ANY: Final = LSR_OE | LSR_PE | LSR_FE | LSR_BI
MSR_DELTAS, MSR_IDLE = 0x0F, 0xB0
TRIGGER: Final = (1, 4, 8, 14)  # FCR bits 7:6


@dataclass
class Serial16550:
    """A 16550A at ``base``; ``irq``/``irq_line``: where its interrupt goes; ``now``/``tsc_hz``: virtual time for
    the character timeout (without ``now`` it never fires). ``regs`` holds IER (1), LCR (3), MCR (4), SCR (7)."""

    base: int = COM1
    output: bytearray = field(default_factory=bytearray)
    dropped: int = 0
    regs: dict[int, int] = field(default_factory=lambda: {1: 0, 3: 0x03, 4: 0, 7: 0})
    divisor: int = 12
    sink: Callable[[bytes], None] | None = field(default=None, repr=False, compare=False)  # live output (CLI)
    irq: IrqSink = field(default_factory=NullIrq, repr=False, compare=False)
    irq_line: int = COM1_IRQ
    gate_out2: bool = True
    now: Now | None = field(default=None, repr=False, compare=False)
    tsc_hz: int = 2_000_000_000
    lsr: int = LSR_THRE | LSR_TEMT
    msr: int = MSR_IDLE
    fcr: int = 0
    rx: bytearray = field(default_factory=bytearray)  # receive FIFO (or the RBR alone without FIFOs)
    thr_pending: bool = False  # THR-empty interrupt source
    timeout_at: int | None = None  # the tick the character timeout fires (FIFO mode)
    timeout_pending: bool = False
    level: bool = False  # the IRQ line as last driven

    # -- registers --------------------------------------------------------------------------------------
    @property
    def ier(self) -> int:
        return self.regs[1]

    @property
    def lcr(self) -> int:
        return self.regs[3]

    @property
    def mcr(self) -> int:
        return self.regs[4]

    def native_ok(self) -> tuple[bool, bool]:
        """(LSR reads may be answered natively as 0x60, THR writes may be taken natively as plain output):
        the C fast path (csrc vn_in/vn_out) only knows the interrupt-free, loopback-free console."""
        lsr_ok = self.lsr == LSR_THRE | LSR_TEMT and not self.mcr & MCR_LOOP
        return lsr_ok, lsr_ok and not self.lcr & LCR_DLAB and not self.ier & IER_THRI

    def read(self, port: int, size: int) -> int:
        self._poll()
        off = port - self.base
        dlab = self.lcr & LCR_DLAB
        if off == 0:
            return self.divisor & 0xFF if dlab else self._read_rbr()
        if off == 1:
            return self.divisor >> 8 if dlab else self.ier
        if off == 2:  # IIR; an IIR read reporting THRE clears that source (data sheet Table IV)
            iir = self._iir()
            if iir == IIR_THRI:
                self.thr_pending = False
                self._update()
            return iir | (IIR_FIFO if self.fcr & FCR_FE else 0)
        if off == 5:  # reading LSR clears OE and BI (and with them the line status interrupt)
            value = self.lsr
            if value & (LSR_OE | LSR_BI):
                self.lsr &= ~(LSR_OE | LSR_BI)
                self._update()
            return value
        if off == 6:
            if self.mcr & MCR_LOOP:  # loopback: CTS<-RTS, DSR<-DTR, RI<-OUT1, DCD<-OUT2 (QEMU: no deltas)
                m = self.mcr
                return (m & MCR_RTS) << 3 | (m & MCR_DTR) << 5 | (m & (MCR_OUT1 | MCR_OUT2)) << 4
            value = self.msr
            if value & MSR_DELTAS:
                self.msr &= ~MSR_DELTAS
                self._update()
            return value
        return self.regs.get(off, 0)

    def write(self, port: int, size: int, value: int) -> None:
        self._poll()
        off, value = port - self.base, value & 0xFF
        dlab = self.lcr & LCR_DLAB
        if off == 0 and not dlab:
            self._write_thr(value)
        elif off == 0:
            self.divisor = (self.divisor & 0xFF00) | value
        elif off == 1 and dlab:
            self.divisor = (self.divisor & 0xFF) | value << 8
        elif off == 1:
            changed = (self.ier ^ value) & 0x0F
            self.regs[1] = value & 0x0F
            if changed & IER_THRI:  # QEMU: ETBEI 0->1 with THR empty re-arms THRE (Linux's THRE test)
                self.thr_pending = bool(value & IER_THRI and self.lsr & LSR_THRE)
            self._update()
        elif off == 2:
            self._write_fcr(value)
        elif off in (3, 4, 7):
            self.regs[off] = value & 0x1F if off == 4 else value
            self._update()

    def _write_thr(self, value: int) -> None:
        """THR write: the THRE source clears (the line may drop), then the byte is sent at once and THR is
        empty again (the source sets: a fresh edge for an interrupt-driven driver)."""
        self.thr_pending = False
        self.lsr &= ~(LSR_THRE | LSR_TEMT)
        self._update()
        if self.mcr & MCR_LOOP:
            self._receive(value)  # loopback: the byte comes back to the receiver, not the line
        else:
            self.transmit(bytes((value,)))
        self.lsr |= LSR_THRE | LSR_TEMT
        self.thr_pending = True
        self._update()

    def _write_fcr(self, value: int) -> None:
        """FCR: FIFO enable (a change resets both FIFOs), receive/transmit FIFO resets, the trigger level."""
        if (value ^ self.fcr) & FCR_FE:
            value |= FCR_RFR | FCR_XFR
        if value & FCR_RFR:
            self.rx.clear()
            self.lsr &= ~(LSR_DR | LSR_BI)
            self.timeout_at, self.timeout_pending = None, False
        if value & FCR_XFR:
            self.lsr |= LSR_THRE | LSR_TEMT
            self.thr_pending = True
        self.fcr = value & 0xC9
        self._update()

    def _read_rbr(self) -> int:
        if not self.rx:
            return 0
        value = self.rx.pop(0)
        if not self.rx:
            self.lsr &= ~(LSR_DR | LSR_BI)
            self.timeout_at = None
        elif self.fcr & FCR_FE:
            self._arm_timeout()
        self.timeout_pending = False
        self._update()
        return value

    def _receive(self, value: int) -> None:
        if self.fcr & FCR_FE:
            if len(self.rx) < FIFO_SIZE:
                self.rx.append(value)
            else:
                self.lsr |= LSR_OE  # the FIFO keeps its contents; the character is lost
            self._arm_timeout()
        else:
            if self.lsr & LSR_DR:
                self.lsr |= LSR_OE
            self.rx[:] = bytes((value,))
        self.lsr |= LSR_DR

    # -- interrupts -------------------------------------------------------------------------------------
    def _iir(self) -> int:
        ier, lsr = self.ier, self.lsr
        if ier & IER_RLSI and lsr & LSR_INT_ANY:
            return IIR_RLSI
        if ier & IER_RDI and self.timeout_pending:
            return IIR_CTI
        if ier & IER_RDI and lsr & LSR_DR and (not self.fcr & FCR_FE or len(self.rx) >= TRIGGER[self.fcr >> 6]):
            return IIR_RDI
        if ier & IER_THRI and self.thr_pending:
            return IIR_THRI
        if ier & IER_MSI and self.msr & MSR_DELTAS:
            return IIR_MSI
        return IIR_NONE

    def _update(self) -> None:
        level = self._iir() != IIR_NONE
        if self.gate_out2:
            level = level and self.mcr & (MCR_OUT2 | MCR_LOOP) == MCR_OUT2
        if level != self.level:
            self.level = level
            self.irq.set_irq(self.irq_line, level)

    def _char_ticks(self) -> int:
        """One character time in TSC ticks: start + 5-8 data + parity + 1-2 stop bits at 115200/divisor."""
        lcr = self.lcr
        bits = 1 + 5 + (lcr & 3) + (1 if lcr & 8 else 0) + (2 if lcr & 4 else 1)
        return bits * max(1, self.divisor) * self.tsc_hz // UART_HZ

    def _arm_timeout(self) -> None:
        if self.now is not None:
            self.timeout_at = self.now() + 4 * self._char_ticks()  # QEMU: 4 character times

    def _poll(self) -> None:
        if self.now is not None:
            self.advance(self.now())

    def advance(self, now: int) -> None:
        if self.timeout_at is not None and now >= self.timeout_at:
            self.timeout_at = None
            if self.rx:
                self.timeout_pending = True
                self._update()

    def next_deadline(self) -> int | None:
        return self.timeout_at

    # -- output -----------------------------------------------------------------------------------------
    def transmit(self, data: bytes) -> None:
        """Bytes sent on the line (THR writes, and the C fast path's collected bytes): kept up to SERIAL_LIMIT."""
        if self.sink is not None:
            self.sink(data)
        room = max(0, SERIAL_LIMIT - len(self.output))
        self.output += data[:room]
        self.dropped += max(0, len(data) - room)

    def text(self) -> str:
        return self.output.decode("utf-8", errors="replace")

    # -- snapshots (viridian.state) ------------------------------------------------------------------------
    def save_state(self) -> dict[str, Any]:
        return {"output": self.output.hex(), "dropped": self.dropped, "divisor": self.divisor,
                "regs": [self.regs[k] for k in (1, 3, 4, 7)], "lsr": self.lsr, "msr": self.msr, "fcr": self.fcr,
                "rx": self.rx.hex(), "thr_pending": self.thr_pending, "timeout_at": self.timeout_at,
                "timeout_pending": self.timeout_pending, "level": self.level}

    def load_state(self, state: dict[str, Any]) -> None:
        """8-bit IER/LCR/MCR/SCR, a 16-bit divisor latch, at most SERIAL_LIMIT bytes of output, at most 16
        received bytes, the interrupt sources."""
        f = Fields(state, f"serial@{self.base:#x}")
        values = (bytearray(f.blob("output", SERIAL_LIMIT)), f.uint("dropped", 0, 1 << 63),
                  f.uint("divisor", 0, 0xFFFF), f.uints("regs", 4, 0, 0xFF))
        irq = (f.uint("lsr", 0, 0xFF), f.uint("msr", 0, 0xFF), f.uint("fcr", 0, 0xFF), bytearray(f.blob("rx", 16)),
               f.flag("thr_pending"), f.opt_uint("timeout_at"), f.flag("timeout_pending"), f.flag("level"))
        self.output, self.dropped, self.divisor, regs = values
        self.regs = dict(zip((1, 3, 4, 7), regs, strict=True))
        (self.lsr, self.msr, self.fcr, self.rx, self.thr_pending, self.timeout_at, self.timeout_pending,
         self.level) = irq
