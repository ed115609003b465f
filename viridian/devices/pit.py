"""The 8254 programmable interval timer (ports 0x40-0x43) and PC port B (0x61), engine-free, on virtual time.

Source: Intel 8254 data sheet (control word format, "Modes" 0-5, "Read Operations": counter latch command,
read-back command, status byte; "Gate" table). The input clock is 1,193,182 Hz; counts are computed on read from
the partition TSC with exact integer arithmetic (ticks = elapsed TSC * 1193182 // tsc_hz), nothing ticks in the
background. Where the data sheet is silent or the PC differs, QEMU's i8254/pcspk are followed (said where).
Simplifications: a count is loaded at the write, not one CLK later; a new count in modes 2/3 takes effect at
once (QEMU), not at the end of the current period.

Channel 0's OUT drives ISA IRQ 0 (rising edges are what the PIC / I/O APIC latch); channels 0 and 1 have their
gate tied high; channel 2's gate is port 0x61 bit 0 and its OUT reads back in port 0x61 bit 5 (Linux's
``pit_calibrate_tsc`` / ``quick_pit_calibrate`` poll them). Port 0x61 (PIIX NMI status and control, QEMU
pcspk): bit 0 gate 2, bit 1 speaker data enable, bits 2-3 read back as written, bit 4 toggles on every read
(QEMU's stand-in for the DRAM refresh toggle), bit 5 OUT2, bits 6-7 (NMI sources) read 0.

Hand-off state (:meth:`Pit.bios_init`): as SeaBIOS leaves it -- channel 0 mode 2, count 65536 (18.2 Hz) running
since virtual time 0; channels 1 and 2 at QEMU's reset state (mode 3, count 65536), gate 2 low.
"""

from __future__ import annotations

from typing import Any

from viridian.devices.pc_api import IrqSink, Now, NullIrq

PIT_HZ = 1_193_182
PORTS = (0x40, 0x41, 0x42, 0x43)
PORT_B = 0x61
RW_LSB, RW_MSB, RW_WORD = 1, 2, 3
_CH_FIELDS = {"mode": 5, "bcd": 1, "rw": 3, "count": 65536, "armed": 1, "triggered": 1, "counting": 1,
              "base_d": 1 << 62, "t0": 1 << 64, "gate": 1, "lsb_pending": 1, "lsb": 0xFF, "read_msb": 1,
              "latched": 0xFFFF, "latch_state": 3, "status": 0xFF, "status_latched": 1, "null_count": 1,
              "frozen": 0xFFFF}


def _from_bcd(v: int) -> int:
    return sum(((v >> (4 * i)) & 0xF) * 10 ** i for i in range(4))


def _to_bcd(v: int) -> int:
    return sum(((v // 10 ** i) % 10) << (4 * i) for i in range(4))


class Channel:
    """One counter. ``d`` is the number of CLK ticks counted since the count was loaded (or re-triggered)."""

    def __init__(self, hz: int) -> None:
        self.hz = hz
        self.mode, self.bcd, self.rw, self.count = 3, 0, RW_WORD, 65536
        self.armed, self.triggered, self.counting = True, False, True
        self.base_d, self.t0 = 0, 0
        self.gate = 1
        self.lsb_pending, self.lsb, self.read_msb = 0, 0, 0
        self.latched, self.latch_state, self.status, self.status_latched = 0, 0, 0, 0
        self.null_count, self.frozen = 0, 0

    # -- time ------------------------------------------------------------------------------------------------
    def d_at(self, now: int) -> int:
        return self.base_d + ((now - self.t0) * PIT_HZ // self.hz if self.counting else 0)

    def tsc_for_d(self, d: int) -> int:
        """Smallest TSC at which ``d_at`` reaches ``d`` (counting)."""
        return self.t0 + -(-(d - self.base_d) * self.hz // PIT_HZ)

    def _restart(self, now: int, d: int = 0) -> None:
        self.base_d, self.t0 = d, now

    def _set_counting(self, now: int) -> None:
        """Freeze ``d`` at ``now`` and re-evaluate whether the counter counts (data sheet "Gate" table)."""
        self.base_d, self.t0 = self.d_at(now), now
        if not self.armed:
            self.counting = False
        elif self.mode in (1, 5):
            self.counting = bool(self.triggered)
        else:
            self.counting = bool(self.gate)

    # -- OUT and the counting element ----------------------------------------------------------------------
    def out_at(self, d: int) -> bool:
        n, m = self.count, self.mode
        if not self.armed:
            return m != 0  # after a control word: mode 0 OUT low, the others high
        if m == 0:
            return d >= n
        if m in (1, 5) and not self.triggered:
            return True
        if m == 1:
            return d >= n
        if m in (4, 5):
            return d != n
        if not self.gate:
            return True  # modes 2/3: gate low forces OUT high
        if m == 2:
            return d % n != n - 1
        return n < 2 or d % n < (n + 1) // 2

    def next_rise(self, d: int) -> int | None:
        """The first tick after ``d`` at which OUT goes from low to high (None: never, as things stand)."""
        if not (self.armed and self.counting):
            return None
        n, m = self.count, self.mode
        if m in (0, 1):
            return n if d < n else None
        if m in (4, 5):
            return n + 1 if d < n + 1 else None
        if n < 2:
            return None  # count 1 in modes 2/3 (illegal in mode 2, data sheet): OUT never rises again
        return (d // n + 1) * n  # modes 2/3: OUT rises as each period ends

    def counter_at(self, d: int) -> int:
        """The counting element's value (data sheet mode descriptions; mode 3 decrements by two per CLK)."""
        n, m = self.count, self.mode
        mod = 10000 if self.bcd else 65536
        if not self.armed or (m in (1, 5) and not self.triggered):
            v = self.frozen if not self.armed else n
        elif m in (0, 1, 4, 5):
            v = (n - d) % mod
        elif m == 2:
            v = n - d % n
        else:
            phase, hi = d % n, (n + 1) // 2
            if n % 2 == 0:
                v = n - 2 * (phase if phase < hi else phase - hi)
            elif phase == 0 or phase == hi:
                v = n
            elif phase < hi:
                v = n + 1 - 2 * phase
            else:
                v = n - 1 - 2 * (phase - hi)
        v %= mod
        return _to_bcd(v) if self.bcd else v

    # -- programming -----------------------------------------------------------------------------------------
    def control(self, now: int, value: int) -> None:
        """Control word with an access mode (bits 5:4 != 0): mode (6/7 alias 2/3), access, BCD; the counter
        waits for a new count (null count set)."""
        self.frozen = self.counter_at(self.d_at(now))
        self.rw, self.mode, self.bcd = (value >> 4) & 3, (value >> 1) & 7, value & 1
        if self.mode > 5:
            self.mode -= 4
        self.armed, self.triggered, self.lsb_pending, self.read_msb, self.null_count = False, False, 0, 0, 1
        self._set_counting(now)

    def latch(self, now: int) -> None:
        """Counter latch command: a second latch before the first is read is ignored."""
        if not self.latch_state:
            self.latched, self.latch_state = self.counter_at(self.d_at(now)), self.rw

    def latch_status(self, now: int) -> None:
        if not self.status_latched:
            out = self.out_at(self.d_at(now))
            self.status = out << 7 | self.null_count << 6 | self.rw << 4 | self.mode << 1 | self.bcd
            self.status_latched = 1

    def write_count(self, now: int, value: int) -> None:
        if self.rw == RW_LSB:
            self._load(now, value)
        elif self.rw == RW_MSB:
            self._load(now, value << 8)
        elif not self.lsb_pending:
            self.lsb, self.lsb_pending = value, 1
            if self.mode == 0:  # mode 0: writing the first byte stops the count, OUT goes low
                self.frozen = self.counter_at(self.d_at(now))
                self.armed = False
                self._set_counting(now)
        else:
            self.lsb_pending = 0
            self._load(now, self.lsb | value << 8)

    def _load(self, now: int, raw: int) -> None:
        n = _from_bcd(raw) if self.bcd else raw
        self.count = n or (10000 if self.bcd else 65536)
        self.armed, self.null_count = True, 0
        self._restart(now)
        self._set_counting(now)

    def set_gate(self, now: int, gate: int) -> None:
        rising = gate and not self.gate
        self.base_d, self.t0 = self.d_at(now), now
        self.gate = gate
        if rising and self.armed and self.mode in (1, 2, 3, 5):  # rising gate (re)triggers / reloads
            self.triggered = True
            self._restart(now)
        self._set_counting(now)

    def read(self, now: int) -> int:
        """Status first if latched, then a latched count, else the live count (QEMU pit_ioport_read)."""
        if self.status_latched:
            self.status_latched = 0
            return self.status
        if self.latch_state:
            v = self.latched
            if self.latch_state == RW_MSB:
                self.latch_state = 0
                return v >> 8
            self.latch_state = RW_MSB if self.latch_state == RW_WORD else 0
            return v & 0xFF
        v = self.counter_at(self.d_at(now))
        if self.rw == RW_MSB:
            return v >> 8
        if self.rw == RW_WORD:
            self.read_msb ^= 1
            if not self.read_msb:
                return v >> 8
        return v & 0xFF

    def save_state(self) -> dict[str, Any]:
        return {k: int(getattr(self, k)) for k in _CH_FIELDS}

    def load_state(self, state: dict[str, Any]) -> None:
        for k, hi in _CH_FIELDS.items():
            v = state.get(k) if isinstance(state, dict) else None
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= hi:
                raise ValueError(f"8254 channel state: bad {k}: {v!r}")
        if state["count"] == 0:
            raise ValueError("8254 channel state: count 0")
        for k in _CH_FIELDS:
            setattr(self, k, state[k])


class Pit:
    """Three channels plus port B. ``irq`` receives IRQ 0 from channel 0's OUT."""

    def __init__(self, now: Now, tsc_hz: int, irq: IrqSink | None = None) -> None:
        self.now, self.irq = now, irq or NullIrq()
        self.channels = [Channel(tsc_hz) for _ in range(3)]
        self.channels[2].gate = 0
        self.channels[2].counting = False
        self.speaker, self.port_b_rw, self.refresh = 0, 0, 0
        self.irq_t = 0  # channel 0's OUT has been followed up to this TSC
        self.irq_level = False
        self.ports = (*PORTS, PORT_B)

    def bios_init(self) -> None:
        """SeaBIOS pit_setup: channel 0 <- 0x34 (mode 2, LSB/MSB, binary), count 0 (65536), at time 0."""
        ch = self.channels[0]
        ch.mode = 2
        ch.t0 = self.irq_t = self.now()
        self.irq_level = ch.out_at(0)

    # -- TimedDevice ------------------------------------------------------------------------------------------
    def next_deadline(self) -> int | None:
        ch = self.channels[0]
        r = ch.next_rise(ch.d_at(self.irq_t))
        return None if r is None else ch.tsc_for_d(r)

    def advance(self, now: int) -> None:
        """Raise IRQ 0 for a rising edge of OUT0 in (irq_t, now] (the PIC/IOAPIC latch one edge; several
        collapse into one, as an undelivered request does), then leave the line at OUT0's level."""
        if now <= self.irq_t:
            return
        ch = self.channels[0]
        d0, d1 = ch.d_at(self.irq_t), ch.d_at(now)
        self.irq_t = now
        r = ch.next_rise(d0)
        if r is not None and r <= d1:
            if self.irq_level:
                self.irq.set_irq(0, False)
            self.irq.set_irq(0, True)
            self.irq_level = True
        self._set_line(ch.out_at(d1))

    def _set_line(self, level: bool) -> None:
        if level != self.irq_level:
            self.irq_level = level
            self.irq.set_irq(0, level)

    # -- ports ------------------------------------------------------------------------------------------------
    def read(self, port: int, size: int) -> int:
        now = self.now()
        if port == PORT_B:
            self.refresh ^= 1
            ch = self.channels[2]
            return (ch.gate | self.speaker << 1 | self.port_b_rw | self.refresh << 4
                    | int(ch.out_at(ch.d_at(now))) << 5)
        if port == 0x43:
            return 0  # the control word register is write-only (QEMU reads 0)
        return self.channels[port - 0x40].read(now)

    def write(self, port: int, size: int, value: int) -> None:
        now = self.now()
        self.advance(now)
        value &= 0xFF
        if port == PORT_B:
            self.speaker, self.port_b_rw = (value >> 1) & 1, value & 0x0C
            self.channels[2].set_gate(now, value & 1)
            return
        if port != 0x43:
            self.channels[port - 0x40].write_count(now, value)
        elif value >> 6 == 3:  # read-back: bit 5 = 0 latch counts, bit 4 = 0 latch status, bits 3:1 channels
            for i, ch in enumerate(self.channels):
                if value & (2 << i):
                    if not value & 0x20:
                        ch.latch(now)
                    if not value & 0x10:
                        ch.latch_status(now)
        elif not value & 0x30:
            self.channels[value >> 6].latch(now)
        else:
            self.channels[value >> 6].control(now, value)
        ch0 = self.channels[0]
        self._set_line(ch0.out_at(ch0.d_at(now)))

    # -- snapshots ----------------------------------------------------------------------------------------------
    def save_state(self) -> dict[str, Any]:
        return {"channels": [c.save_state() for c in self.channels], "speaker": self.speaker,
                "port_b_rw": self.port_b_rw, "refresh": self.refresh, "irq_t": self.irq_t,
                "irq_level": self.irq_level}

    def load_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or not isinstance(state.get("channels"), list) or len(state["channels"]) != 3:
            raise ValueError("8254 state: bad channels")
        for k, hi in (("speaker", 1), ("port_b_rw", 0x0C), ("refresh", 1), ("irq_t", 1 << 64)):
            v = state.get(k)
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= hi:
                raise ValueError(f"8254 state: bad {k}: {v!r}")
        if not isinstance(state.get("irq_level"), bool):
            raise ValueError("8254 state: bad irq_level")
        for ch, s in zip(self.channels, state["channels"], strict=True):
            ch.load_state(s)
        self.speaker, self.port_b_rw, self.refresh = state["speaker"], state["port_b_rw"], state["refresh"]
        self.irq_t, self.irq_level = state["irq_t"], state["irq_level"]


__all__ = ["PIT_HZ", "PORTS", "PORT_B", "Pit"]
