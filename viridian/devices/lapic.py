"""Engine-free local APIC (Intel SDM vol. 3 ch. 11) implementing :class:`msr.apic.LocalApicPort`.

* xAPIC register semantics (``read_register``/``write_register`` of 32-bit values at MMIO offsets):
  unaligned offsets read 0 and ignore writes; reserved offsets do the same and log "illegal register
  address" in the ESR (§11.5.3); writes to read-only registers are ignored.
* x2APIC semantics (§11.12.1.2/.3) when ``x2apic`` is set: reserved or absent registers, reads of
  write-only registers, writes of read-only registers and set reserved bits raise ``GuestFault(#GP)``.
* IRR/ISR/TMR are 256-bit ints; PPR is derived on demand. The timer is a function of the VirtualClock.
* IPIs go through the :class:`~viridian.devices.apic_bus.ApicBus` the APIC is attached to.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from msr.apic import (
    APIC_DFR,
    APIC_EOI,
    APIC_ESR,
    APIC_ICR_HIGH,
    APIC_ICR_LOW,
    APIC_ID,
    APIC_LDR,
    APIC_LVT_CMCI,
    APIC_LVT_ERROR,
    APIC_LVT_LINT0,
    APIC_LVT_TIMER,
    APIC_SELF_IPI,
    APIC_SVR,
    APIC_TIMER_DIVIDE,
    APIC_TIMER_INITIAL,
    APIC_TPR,
)
from msr.faults import GuestFault, gp
from viridian.clock import VirtualClock
from viridian.devices.apic_timer import ApicTimer
from viridian.devices.lapic_defs import (
    APIC_VERSION_ID,
    DFR_CLUSTER,
    DFR_FLAT,
    DFR_RESERVED_ONES,
    ESR_ILLEGAL_REGISTER,
    ESR_RECEIVE_ILLEGAL_VECTOR,
    ESR_SEND_ILLEGAL_VECTOR,
    ICR_HIGH_XAPIC_WRITABLE,
    ICR_LOW_WRITABLE,
    LVT_DELIVERY_MODE,
    LVT_LEVEL,
    LVT_MASKED,
    LVT_READ_ONLY,
    LVT_TIMER_MODE_SHIFT,
    LVT_WRITABLE,
    MASK32,
    MASK64,
    SVR_ENABLE,
    SVR_RESET,
    X2APIC_ICR_RESERVED,
    DeliveryMode,
    Shorthand,
    TimerMode,
    x2apic_ldr,
)
from viridian.devices.lapic_regs import (
    BITMAP_REGS,
    READERS,
    WRITABLE,
    WRITE_ONLY,
    X2APIC_ABSENT,
    XAPIC_WRITABLE,
)
from viridian.state import Fields, StateError, check_int

if TYPE_CHECKING:
    from viridian.devices.apic_bus import ApicBus

Callback = Callable[[int], None]


class LocalApic:
    """One virtual processor's local APIC. APIC ID = VP index (the initial APIC ID)."""

    def __init__(
        self,
        vp_index: int,
        clock: VirtualClock,
        *,
        cmci: bool = False,
        on_eoi_broadcast: Callback | None = None,
    ) -> None:
        """``cmci`` adds the LVT CMCI entry (7 LVT entries, version 0x60014; KVM offers it only with
        MCG_CAP.CMCI_P); without it the version is KVM's 0x50014. ``on_eoi_broadcast(vector)`` is called
        on EOI of a level-triggered vector (the I/O APIC clears Remote IRR)."""
        self.vp_index = vp_index
        self.initial_id = vp_index  # §11.4.6: set by hardware; the x2APIC ID is never writable
        self.clock: VirtualClock = clock
        self.cmci = cmci
        self.on_eoi_broadcast = on_eoi_broadcast
        self.on_eoi: Callback | None = None  # every EOI (guest or auto-EOI), with its vector: SynIC rescans
        self.bus: ApicBus | None = None
        self.version: int = APIC_VERSION_ID | ((6 if cmci else 5) << 16)
        self._lvt_offsets = tuple(o for o in LVT_WRITABLE if cmci or o != APIC_LVT_CMCI)
        self.timer: ApicTimer = ApicTimer(clock)
        self._in_error = False
        self.reset()

    def __repr__(self) -> str:
        mode = "x2apic" if self._x2apic else "xapic" if self._hw_enabled else "disabled"
        return f"<LocalApic vp={self.vp_index} id={self.apic_id:#x} {mode}>"

    # -- modes, reset, INIT -------------------------------------------------------------------------
    def _reset_registers(self) -> None:
        """§11.4.7.1: IRR/ISR/TMR/ICR/LDR/TPR/ESR and timer zero, DFR all ones, LVTs masked, SVR 0xFF
        (software disabled). Version and ID are not touched."""
        self._tpr = 0
        self._ldr = 0
        self._dfr = MASK32
        self._svr = SVR_RESET
        self._isr = self._irr = self._tmr = 0
        self._esr = self._esr_pending = 0
        self._icr_low = self._icr_high = 0
        self._lvt = dict.fromkeys(self._lvt_offsets, LVT_MASKED)
        self.timer.reset()

    def reset(self) -> None:
        """Power-up/RESET: xAPIC mode, globally enabled, initial ID (§11.12.5.1 "x2APIC after reset")."""
        self._hw_enabled, self._x2apic = True, False
        self._xapic_id = self.initial_id & 0xFF
        self._reset_registers()

    def init(self) -> None:
        """INIT (§11.4.7.3, §11.12.5.1): like reset but the ID and the mode (xAPIC/x2APIC/disabled) stay."""
        self._reset_registers()

    @property
    def hw_enabled(self) -> bool:
        """IA32_APIC_BASE[11] (global enable)."""
        return self._hw_enabled

    @property
    def x2apic(self) -> bool:
        """IA32_APIC_BASE[10] (x2APIC mode)."""
        return self._x2apic

    @property
    def sw_enabled(self) -> bool:
        """SVR bit 8 (§11.4.7.2)."""
        return bool(self._svr & SVR_ENABLE)

    def set_mode(self, enabled: bool, x2apic: bool) -> None:
        """Apply an IA32_APIC_BASE mode change the MSR layer has validated (§11.12.5.1). Disabling
        resets every register but the ID (state does not survive the disabled state); xAPIC -> x2APIC
        keeps the registers and derives the logical x2APIC ID from the x2APIC ID."""
        if x2apic and not enabled:
            raise ValueError("EN=0, EXTD=1 is not a valid APIC state")
        if not enabled or (self._x2apic and not x2apic):
            if self._x2apic:
                self._xapic_id = self.initial_id & 0xFF  # the xAPIC ID is the low byte of the x2APIC ID
            if self._hw_enabled:
                self._reset_registers()
        self._hw_enabled, self._x2apic = enabled, x2apic

    # -- identification and priorities --------------------------------------------------------------
    @property
    def apic_id(self) -> int:
        """The 32-bit x2APIC ID in x2APIC mode, else the 8-bit xAPIC ID."""
        return self.initial_id if self._x2apic else self._xapic_id

    @property
    def ldr(self) -> int:
        """Logical destination register: derived and read-only in x2APIC mode (§11.12.10.2)."""
        return x2apic_ldr(self.initial_id) if self._x2apic else self._ldr

    @property
    def dfr(self) -> int:
        return self._dfr

    @property
    def svr(self) -> int:
        return self._svr

    @property
    def esr(self) -> int:
        """The ESR as last latched by a write (§11.5.3)."""
        return self._esr

    @property
    def isr(self) -> int:
        """In-service register as a 256-bit int (bit n = vector n)."""
        return self._isr

    @property
    def irr(self) -> int:
        return self._irr

    @property
    def tmr(self) -> int:
        return self._tmr

    @property
    def ppr(self) -> int:
        """Processor priority (§11.8.3.1): TPR if its class >= the highest in-service class, else that
        class with subclass 0."""
        isrv = self._isr.bit_length() - 1 if self._isr else 0
        return self._tpr if (self._tpr >> 4) >= (isrv >> 4) else isrv & 0xF0

    @property
    def apr(self) -> int:
        """Arbitration priority (xAPIC only; §11.6.2.4 style): TPR unless a pending or in-service class
        is at least as high."""
        irrv = self._irr.bit_length() - 1 if self._irr else 0
        isrv = self._isr.bit_length() - 1 if self._isr else 0
        tpr = self._tpr
        if (tpr >> 4) >= (irrv >> 4) and (tpr >> 4) > (isrv >> 4):
            return tpr
        return max(tpr & 0xF0, isrv & 0xF0, irrv & 0xF0)

    def get_tpr(self) -> int:
        return self._tpr

    def set_tpr(self, value: int) -> None:
        """TPR bits 7:0 (§11.8.3.1); CR8 and the Hyper-V TPR MSR land here too."""
        self._tpr = value & 0xFF

    def matches_logical(self, mda: int) -> bool:
        """Logical destination match (§11.6.2.2 flat/cluster; §11.12.10.2 x2APIC cluster + bitmap)."""
        if self._x2apic:
            ldr = x2apic_ldr(self.initial_id)
            return (ldr >> 16) == (mda >> 16) and bool(ldr & mda & 0xFFFF)
        if mda > 0xFF:
            return False
        logical_id, model = self._ldr >> 24, self._dfr >> 28
        if model == DFR_FLAT:
            return bool(logical_id & mda)
        if model == DFR_CLUSTER:
            return (logical_id >> 4) == (mda >> 4) and bool(logical_id & mda & 0xF)
        return False  # other DFR models are undefined; KVM matches nothing

    # -- interrupt acceptance and servicing ---------------------------------------------------------
    def assert_interrupt(self, vector: int, level: bool = False) -> bool:
        """Accept a fixed interrupt into the IRR (§11.8.4). False if dropped: APIC globally or software
        disabled (§11.4.7.2, KVM), or an illegal vector 0-15 ("received illegal vector", §11.5.3)."""
        if not 0 <= vector <= 0xFF:
            raise ValueError(f"vector {vector} out of range")
        if not self._hw_enabled or not self._svr & SVR_ENABLE:
            return False
        if vector < 16:
            self._error(ESR_RECEIVE_ILLEGAL_VECTOR)
            return False
        bit = 1 << vector
        newly = not self._irr & bit
        self._irr |= bit
        self._tmr = self._tmr | bit if level else self._tmr & ~bit  # TMR follows the trigger mode
        if newly and self.bus is not None:
            self.bus.kick(self)
        return True

    def pending_vector(self) -> int | None:
        """Highest IRR vector whose priority class beats the PPR class (§11.8.3.1), else None."""
        irr = self._irr
        if not irr or not self._hw_enabled:
            return None
        vector = irr.bit_length() - 1
        return vector if (vector >> 4) > (self.ppr >> 4) else None

    def acknowledge(self) -> int:
        """INTA: move the pending vector from IRR to ISR and return it; with nothing deliverable the
        APIC answers with the spurious vector and sets no ISR bit (§11.9)."""
        vector = self.pending_vector()
        if vector is None:
            return self._svr & 0xFF
        bit = 1 << vector
        self._irr &= ~bit
        self._isr |= bit
        return vector

    def auto_eoi(self, vector: int) -> None:
        """An auto-EOI vector (SynIC SINTx AutoEOI): out of service right at delivery, no broadcast."""
        self._isr &= ~(1 << vector)
        if self.on_eoi is not None:
            self.on_eoi(vector)

    def eoi(self) -> None:
        """Clear the highest ISR bit (§11.8.5); a level-triggered vector (TMR) is broadcast to the I/O
        APIC (EOI-broadcast suppression is not offered). An EOI with nothing in service does nothing."""
        if not self._isr:
            return
        vector = self._isr.bit_length() - 1
        bit = 1 << vector
        self._isr &= ~bit
        if self.on_eoi is not None:
            self.on_eoi(vector)
        if self._tmr & bit and self.on_eoi_broadcast is not None:
            self.on_eoi_broadcast(vector)

    def is_level(self, vector: int) -> bool:
        return bool(self._tmr >> vector & 1)

    def highest_isr(self) -> int | None:
        return self._isr.bit_length() - 1 if self._isr else None

    def highest_irr(self) -> int | None:
        return self._irr.bit_length() - 1 if self._irr else None

    def isr_vectors(self) -> list[int]:
        return _bits(self._isr)

    def irr_vectors(self) -> list[int]:
        return _bits(self._irr)

    def _error(self, bit: int) -> None:
        """Record an error; it is collected even when the LVT error entry is masked (§11.5.3)."""
        self._esr_pending |= bit
        lvt = self._lvt[APIC_LVT_ERROR]
        if not lvt & LVT_MASKED and not self._in_error:
            self._in_error = True  # an illegal error vector must not recurse
            try:
                self.assert_interrupt(lvt & 0xFF)
            finally:
                self._in_error = False

    def fire_lvt(self, offset: int) -> bool:
        """Signal a local interrupt source (LINT0/1 pin, thermal, perf, CMCI, error) through its LVT
        entry (§11.5.1). Fixed -> IRR, NMI/INIT -> the bus callbacks; SMI and ExtINT are not modelled
        here (ExtINT: the machine asks its PIC). True if something was delivered."""
        lvt = self._lvt.get(offset)
        if lvt is None or lvt & LVT_MASKED or not self._hw_enabled:
            return False
        mode = (lvt & LVT_DELIVERY_MODE) >> 8 if offset not in (APIC_LVT_TIMER, APIC_LVT_ERROR) else 0
        if mode == DeliveryMode.FIXED:
            return self.assert_interrupt(lvt & 0xFF, level=offset == APIC_LVT_LINT0 and bool(lvt & LVT_LEVEL))
        if mode in (DeliveryMode.NMI, DeliveryMode.INIT) and self.bus is not None:
            self.bus.deliver(self, DeliveryMode(mode), 0)
            return True
        return False

    # -- IPIs ---------------------------------------------------------------------------------------
    def read_icr(self) -> int:
        """64-bit ICR (xAPIC: ICR high in bits 63:32); the delivery-status bit always reads idle."""
        return (self._icr_high << 32) | self._icr_low

    def write_icr(self, value: int) -> None:
        """Write the whole ICR and send the IPI (x2APIC MSR 0x830 / Hyper-V ICR MSR, §11.12.9)."""
        value &= MASK64
        if self._x2apic:
            if value & X2APIC_ICR_RESERVED:
                raise GuestFault(gp(f"x2APIC ICR reserved bits {value & X2APIC_ICR_RESERVED:#x}"))
            self._icr_high, self._icr_low = value >> 32, value & MASK32
        else:
            self._icr_high = (value >> 32) & ICR_HIGH_XAPIC_WRITABLE
            self._icr_low = value & ICR_LOW_WRITABLE
        self._send(self.read_icr())

    def self_ipi(self, vector: int) -> None:
        """x2APIC SELF IPI register (§11.12.11): fixed, edge, to this APIC."""
        self._send((Shorthand.SELF << 18) | (vector & 0xFF))

    def _send(self, icr: int) -> None:
        mode = (icr >> 8) & 7
        if mode in (DeliveryMode.FIXED, DeliveryMode.LOWEST_PRIORITY) and (icr & 0xFF) < 16:
            self._error(ESR_SEND_ILLEGAL_VECTOR)  # §11.5.3: the IPI is not sent
            return
        if self.bus is not None:
            self.bus.send(self, icr)
        elif (icr >> 18) & 3 == Shorthand.SELF and mode == DeliveryMode.FIXED:
            self.assert_interrupt(icr & 0xFF)  # without a bus only self-IPIs can be delivered

    # -- register file ------------------------------------------------------------------------------
    def read_register(self, offset: int) -> int:
        """32-bit read at an xAPIC offset (x2APIC: offset = (msr - 0x800) << 4; raises GuestFault)."""
        if not self._hw_enabled:
            return 0
        if self._x2apic:
            if offset in X2APIC_ABSENT or offset in WRITE_ONLY or not self._exists(offset):
                raise GuestFault(gp(f"x2APIC read of invalid register {offset:#x}"))
        elif offset & 0xF:
            return 0
        elif offset == APIC_SELF_IPI or not self._exists(offset):
            self._error(ESR_ILLEGAL_REGISTER)
            return 0
        bitmap = BITMAP_REGS.get(offset)
        if bitmap is not None:
            return (getattr(self, bitmap[0]) >> (32 * bitmap[1])) & MASK32
        lvt = self._lvt.get(offset)
        return lvt if lvt is not None else READERS[offset](self)

    def _exists(self, off: int) -> bool:
        return off in READERS or off in BITMAP_REGS or off in self._lvt

    def write_register(self, offset: int, value: int) -> None:
        """32-bit write at an xAPIC offset (x2APIC: the MSR semantics of §11.12.1.2/.3)."""
        if not self._hw_enabled:
            return
        if self._x2apic:
            self._x2apic_write(offset, value)
            return
        if offset & 0xF:
            return
        if offset == APIC_SELF_IPI or not self._exists(offset):
            self._error(ESR_ILLEGAL_REGISTER)
            return
        mask = WRITABLE.get(offset)
        if mask is None:
            mask = XAPIC_WRITABLE.get(offset)
        if mask is not None:  # read-only registers ignore writes
            self._write(offset, value & mask)

    def _x2apic_write(self, offset: int, value: int) -> None:
        if offset == APIC_ICR_LOW:
            self.write_icr(value)
            return
        if offset in X2APIC_ABSENT or not self._exists(offset):
            raise GuestFault(gp(f"x2APIC write of invalid register {offset:#x}"))
        mask = 0xFF if offset == APIC_SELF_IPI else WRITABLE.get(offset)
        if mask is None:
            raise GuestFault(gp(f"x2APIC write of read-only register {offset:#x}"))
        ro = LVT_READ_ONLY if offset in self._lvt else 0
        if value & ~(mask | ro) & MASK64 or value >> 64:
            raise GuestFault(gp(f"x2APIC register {offset:#x}: reserved bits in {value:#x}"))
        self._write(offset, value & mask)

    def _write(self, off: int, v: int) -> None:
        if off in self._lvt:
            self._write_lvt(off, v)
        elif off == APIC_TPR:
            self._tpr = v
        elif off == APIC_EOI:
            self.eoi()
        elif off == APIC_SVR:
            self._write_svr(v)
        elif off == APIC_ESR:
            self._esr, self._esr_pending = self._esr_pending, 0  # §11.5.3: a write latches the errors
        elif off == APIC_ICR_LOW:
            self._icr_low = v
            self._send(self.read_icr())
        elif off == APIC_ICR_HIGH:
            self._icr_high = v
        elif off == APIC_TIMER_INITIAL:
            self.poll()
            self.timer.set_initial(self.clock.tsc(), v)
        elif off == APIC_TIMER_DIVIDE:
            self.poll()
            self.timer.set_dcr(self.clock.tsc(), v)
        elif off == APIC_SELF_IPI:
            self.self_ipi(v)
        elif off == APIC_ID:
            self._xapic_id = v >> 24
        elif off == APIC_LDR:
            self._ldr = v
        elif off == APIC_DFR:
            self._dfr = v | DFR_RESERVED_ONES

    def _write_svr(self, v: int) -> None:
        """§11.4.7.2: software-disabling sets every LVT mask bit; they cannot be cleared while disabled."""
        self.poll()
        self._svr = v
        if not v & SVR_ENABLE:
            for off in self._lvt:
                self._lvt[off] |= LVT_MASKED

    def _write_lvt(self, off: int, v: int) -> None:
        if off == APIC_LVT_TIMER:
            self.poll()  # expirations so far are judged under the old entry
        if not self._svr & SVR_ENABLE:
            v |= LVT_MASKED
        self._lvt[off] = v
        if off == APIC_LVT_TIMER:
            self.timer.set_mode(self.clock.tsc(), TimerMode((v >> LVT_TIMER_MODE_SHIFT) & 3))

    # -- timer ----------------------------------------------------------------------------------------
    @property
    def tsc_offset(self) -> int:
        """Guest TSC minus the partition TSC (mod 2**64), kept by IA32_TSC/IA32_TSC_ADJUST."""
        return self.timer.tsc_offset

    @tsc_offset.setter
    def tsc_offset(self, value: int) -> None:
        self.poll()
        self.timer.tsc_offset = value & MASK64

    def read_tsc_deadline(self) -> int:
        """IA32_TSC_DEADLINE (§11.5.4.1): the armed deadline, 0 once fired or outside deadline mode."""
        self.poll()
        return self.timer.read_deadline()

    def write_tsc_deadline(self, value: int) -> None:
        """Arm (non-zero) or disarm (0); a deadline already in the past fires at once."""
        self.poll()
        self.timer.set_deadline(value)
        self.poll()

    def next_deadline_tsc(self) -> int | None:
        """Partition TSC at which :meth:`poll` will raise the timer interrupt (None: nothing to raise)."""
        if not self._hw_enabled or self._lvt[APIC_LVT_TIMER] & LVT_MASKED:
            return None
        return self.timer.next_expiry(self.clock.tsc())

    def poll(self) -> bool:
        """Process timer expirations due now; raise the LVT timer vector (edge) if unmasked."""
        if not self._hw_enabled or not self.timer.expire(self.clock.tsc()):
            return False
        lvt = self._lvt[APIC_LVT_TIMER]
        return not lvt & LVT_MASKED and self.assert_interrupt(lvt & 0xFF)

    # -- snapshots (viridian.state): registers as plain data, each checked on load ------------------------
    def save_state(self) -> dict[str, Any]:
        return {"hw_enabled": self._hw_enabled, "x2apic": self._x2apic, "xapic_id": self._xapic_id,
                "tpr": self._tpr, "ldr": self._ldr, "dfr": self._dfr, "svr": self._svr,
                "isr": f"{self._isr:064x}", "irr": f"{self._irr:064x}", "tmr": f"{self._tmr:064x}",
                "esr": self._esr, "esr_pending": self._esr_pending, "icr_low": self._icr_low,
                "icr_high": self._icr_high, "lvt": [[off, self._lvt[off]] for off in self._lvt_offsets],
                "timer": self.timer.save_state()}

    def load_state(self, state: dict[str, Any]) -> None:
        """Registers from a snapshot: 8-bit xAPIC ID, 32-bit registers, 256-bit IRR/ISR/TMR, the LVT
        entries this APIC has (§11.5.1), and EN=0 with EXTD=1 refused (§11.12.5.1)."""
        f = Fields(state, f"apic[{self.vp_index}]")
        hw, x2 = f.flag("hw_enabled"), f.flag("x2apic")
        if x2 and not hw:
            raise StateError(f"{f.where}: x2APIC mode with the APIC disabled is not a valid state")
        vectors = {k: int.from_bytes(f.blob(k, 32), "big") for k in ("isr", "irr", "tmr")}
        lvt = f.seq("lvt", len(self._lvt_offsets))
        entries: dict[int, int] = {}
        for i, item in enumerate(lvt):
            if type(item) is not list or len(item) != 2 or item[0] != self._lvt_offsets[i]:
                raise StateError(f"{f.where}.lvt[{i}]: expected [{self._lvt_offsets[i]:#x}, value]")
            entries[item[0]] = check_int(item[1], 0, MASK32, f"{f.where}.lvt[{i}]")
        regs = {k: f.uint(k, 0, MASK32) for k in ("ldr", "dfr", "svr", "esr", "esr_pending", "icr_low",
                                                 "icr_high")}
        self.timer.load_state(f.sub("timer"))
        self._hw_enabled, self._x2apic = hw, x2
        self._xapic_id, self._tpr = f.uint("xapic_id", 0, 0xFF), f.uint("tpr", 0, 0xFF)
        self._ldr, self._dfr, self._svr = regs["ldr"], regs["dfr"], regs["svr"]
        self._esr, self._esr_pending = regs["esr"], regs["esr_pending"]
        self._icr_low, self._icr_high = regs["icr_low"], regs["icr_high"]
        self._isr, self._irr, self._tmr = vectors["isr"], vectors["irr"], vectors["tmr"]
        self._lvt = entries


def _bits(bitmap: int) -> list[int]:
    out = []
    while bitmap:
        low = bitmap & -bitmap
        out.append(low.bit_length() - 1)
        bitmap ^= low
    return out


__all__ = ["LocalApic"]
