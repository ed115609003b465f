"""CMOS RAM and real-time clock (Motorola MC146818A / the PC's "RTC", ports 0x70 index, 0x71 data), engine-free.

Registers (MC146818A data sheet, "Address map"): 0x00-0x09 time/date/alarm, 0x0A-0x0D status A-D, then
general-purpose RAM up to 0x7F (0x32: century, the ACPI FADT CENTURY default). The time is derived from a
fixed epoch plus the virtual clock, so a run is deterministic. The update cycle is modelled as instantaneous:
status A's UIP bit (update in progress) reads 0 and every read sees a consistent time; an update ends at each
whole second of virtual time. Port 0x70 bit 7 is the NMI-disable latch of the PC chipset: kept, it masks nothing.

Interrupts (data sheet "Interrupts", "Register C"): the periodic flag PF at the rate of status A's RS bits
(32.768 kHz divided by 2^(RS-1); RS 1 and 2 give 256 and 128 Hz as RS 8 and 9), the alarm flag AF when an
update finds seconds, minutes and hours equal to the alarm bytes (an alarm byte 0xC0-0xFF matches any value) and
the update-ended flag UF after each update; the flags are set whether or not their enables (status B PIE, AIE,
UIE) are; IRQF = PF.PIE | AF.AIE | UF.UIE drives IRQ 8 (the PC inverts the active-low IRQ pin: a rising edge).
Reading status C returns the flags and clears them and IRQF. Status A's divider bits stop periodic interrupts
in reset (DV = 11x) and updates unless DV <= 010 (QEMU rtc_running); SET in status B inhibits updates and clears
UIE. Flags come from virtual time in closed form (``advance``/``next_deadline``, viridian.devices.pc_api), so
they do not depend on when the machine looks. Divider-reset hand-back (the first update 500 ms after DV = 010)
is not modelled: updates stay on whole virtual seconds.
"""

from __future__ import annotations

import calendar
import time
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from viridian.clock import DEFAULT_TSC_HZ
from viridian.devices.pc_api import IrqSink, Now, NullIrq
from viridian.state import Fields

INDEX_PORT: Final = 0x70
DATA_PORT: Final = 0x71
EPOCH: Final = calendar.timegm((2025, 1, 1, 0, 0, 0, 0, 0, 0))  # 2025-01-01T00:00:00Z at virtual time 0
REG_A, REG_B, REG_C, REG_D = 0x0A, 0x0B, 0x0C, 0x0D
CENTURY: Final = 0x32
B_24H, B_BINARY, B_SET = 1 << 1, 1 << 2, 1 << 7
B_UIE, B_AIE, B_PIE = 1 << 4, 1 << 5, 1 << 6
C_UF, C_AF, C_PF, C_IRQF = 1 << 4, 1 << 5, 1 << 6, 1 << 7
RTC_IRQ: Final = 8
RTC_HZ: Final = 32_768
D_VRT: Final = 1 << 7  # valid RAM and time
A_DEFAULT: Final = 0x26  # 32.768 kHz time base, 1024 Hz periodic rate (power-on value BIOSes program)


@dataclass
class Cmos:
    """``seconds``: the virtual time in seconds since the machine started; ``now``/``tsc_hz``: the same in TSC
    ticks (for the interrupt flags; without ``now`` they are derived from ``seconds``); ``irq``: IRQ 8."""

    seconds: Callable[[], float]
    index: int = 0
    nmi_disabled: bool = False
    ram: bytearray = field(default_factory=lambda: bytearray(128))
    offset: int = 0  # seconds the guest moved the clock by (writes with status B SET)
    now: Now | None = None
    tsc_hz: int = DEFAULT_TSC_HZ
    irq: IrqSink = field(default_factory=NullIrq)
    flags: int = 0  # status C's PF, AF, UF
    line: bool = False  # IRQ 8 as last driven (= IRQF)
    _synced: int = 0  # the tick up to which flags have been brought

    def __post_init__(self) -> None:
        self.ram[REG_A], self.ram[REG_B], self.ram[REG_D] = A_DEFAULT, B_24H, D_VRT

    def read(self, port: int, size: int) -> int:
        if port == INDEX_PORT:
            return 0xFF  # the index register is write-only on the PC (reads float)
        if self.index in (REG_A, REG_B, REG_C):
            self.advance(self._ticks())
        return self._read(self.index)

    def write(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        if port == INDEX_PORT:
            self.index, self.nmi_disabled = value & 0x7F, bool(value & 0x80)
            return
        self.advance(self._ticks())  # flags due under the old settings first
        self._write(self.index, value)
        self._drive()

    # -- snapshots (viridian.state) ----------------------------------------------------------------------
    def save_state(self) -> dict[str, Any]:
        return {"index": self.index, "nmi_disabled": self.nmi_disabled, "ram": self.ram.hex(), "offset": self.offset,
                "flags": self.flags, "line": self.line, "synced": self._synced}

    def load_state(self, state: dict[str, Any]) -> None:
        """A 7-bit index, 128 bytes of CMOS RAM, the guest's clock offset (within years 0..9999)."""
        f = Fields(state, "cmos")
        ram = f.blob("ram", 128)
        if len(ram) != 128:
            raise ValueError("cmos.ram: expected 128 bytes")
        values = (f.uint("index", 0, 0x7F), f.flag("nmi_disabled"), f.uint("offset", -(1 << 40), 1 << 40))
        irq_state = (f.uint("flags", 0, 0x7F), f.flag("line"), f.uint("synced"))  # status C flags, IRQ 8
        if irq_state[0] & ~(C_PF | C_AF | C_UF):
            raise ValueError("cmos.flags: bits other than PF, AF, UF")
        self.index, self.nmi_disabled, self.offset = values
        self.flags, self.line, self._synced = irq_state
        self.ram = bytearray(ram)

    # -- registers ----------------------------------------------------------------------------------------
    def _ticks(self) -> int:
        return self.now() if self.now is not None else int(self.seconds() * self.tsc_hz)

    def _secs(self) -> int:
        return self.now() // self.tsc_hz if self.now is not None else int(self.seconds())

    def _now(self) -> tuple[int, ...]:
        tm = time.gmtime(EPOCH + self._secs() + self.offset)
        return (tm.tm_sec, tm.tm_min, tm.tm_hour, (tm.tm_wday + 1) % 7 + 1, tm.tm_mday, tm.tm_mon,
                tm.tm_year % 100, tm.tm_year // 100)

    def _enc(self, v: int) -> int:
        return v if self.ram[REG_B] & B_BINARY else (v // 10) << 4 | v % 10

    def _dec(self, v: int) -> int:
        return v if self.ram[REG_B] & B_BINARY else (v >> 4) * 10 + (v & 0xF)

    def _read(self, reg: int) -> int:
        time_regs = {0x00: 0, 0x02: 1, 0x04: 2, 0x06: 3, 0x07: 4, 0x08: 5, 0x09: 6, CENTURY: 7}
        if reg in time_regs:
            value = self._now()[time_regs[reg]]
            if reg == 0x04 and not self.ram[REG_B] & B_24H:  # 12-hour mode: 1-12, bit 7 = PM
                pm = value >= 12
                value = (value % 12) or 12
                return self._enc(value) | (0x80 if pm else 0)
            return self._enc(value)
        if reg == REG_A:
            return self.ram[REG_A] & 0x7F  # UIP = 0: updates are instantaneous
        if reg == REG_C:  # "Register C": read clears every flag and IRQF (the line drops)
            value = self.flags | (C_IRQF if self._irqf() else 0)
            self.flags = 0
            self._drive()
            return value
        return self.ram[reg]

    def _write(self, reg: int, value: int) -> None:
        time_regs = {0x00: 0, 0x02: 1, 0x04: 2, 0x07: 4, 0x08: 5, 0x09: 6}
        if reg in time_regs:
            self._set_field(time_regs[reg], value)
        elif reg == REG_A:
            self.ram[REG_A] = value & 0x7F
        elif reg == REG_B:
            if value & B_SET:
                value &= ~B_UIE  # "SET ... UIE is cleared when SET is written 1"
            self.ram[REG_B] = value
        elif reg in (REG_C, REG_D):
            return  # read-only
        else:
            self.ram[reg] = value

    def _set_field(self, which: int, value: int) -> None:
        """A write to a time register moves the clock so that field reads back ``value``."""
        now = list(self._now())
        if which == 2 and not self.ram[REG_B] & B_24H:
            pm = bool(value & 0x80)
            hour = self._dec(value & 0x7F) % 12
            now[2] = hour + (12 if pm else 0)
        else:
            now[which] = self._dec(value)
        year = now[7] * 100 + now[6]
        if not 1 <= now[5] <= 12 or not 1 <= now[4] <= 31:
            return
        try:
            target = calendar.timegm((year, now[5], now[4], now[2], now[1], now[0], 0, 0, 0))
        except (ValueError, OverflowError):
            return
        self.offset += target - (EPOCH + self._secs() + self.offset)

    # -- interrupts (viridian.devices.pc_api: advance / next_deadline) ----------------------------------
    def _period(self) -> int | None:
        """The periodic interval in 32.768 kHz cycles, None when off (RS = 0 or the divider held in reset)."""
        a = self.ram[REG_A]
        rs = a & 0xF
        if rs == 0 or a & 0x60 == 0x60:
            return None
        return 1 << ((rs + 7 if rs <= 2 else rs) - 1)

    def _updating(self) -> bool:
        return self.ram[REG_A] & 0x70 <= 0x20 and not self.ram[REG_B] & B_SET

    def _irqf(self) -> bool:
        b = self.ram[REG_B]
        enabled = (C_PF if b & B_PIE else 0) | (C_AF if b & B_AIE else 0) | (C_UF if b & B_UIE else 0)
        return bool(self.flags & enabled)

    def _drive(self) -> None:
        level = self._irqf()
        if level != self.line:
            self.line = level
            self.irq.set_irq(RTC_IRQ, level)

    def advance(self, now: int) -> None:
        """Set the flags of every event in (last advance, now]."""
        s, h = self._synced, self.tsc_hz
        if now > s:
            p = self._period()
            if p is not None and now * RTC_HZ // h // p > s * RTC_HZ // h // p:
                self.flags |= C_PF
            if self._updating() and now // h > s // h:
                self.flags |= C_UF
                alarm = self._next_alarm(s // h)
                if alarm is not None and alarm <= now // h:
                    self.flags |= C_AF
            self._synced = now
        self._drive()

    def next_deadline(self) -> int | None:
        """The tick of the next event that raises IRQ 8 (none while IRQF is already set)."""
        if self.line:
            return None
        b, s, h = self.ram[REG_B], self._synced, self.tsc_hz
        best: list[int] = []
        p = self._period()
        if b & B_PIE and p is not None:
            cycles = (s * RTC_HZ // h // p + 1) * p
            best.append(-(-cycles * h // RTC_HZ))
        if self._updating() and b & B_UIE:
            best.append((s // h + 1) * h)
        if self._updating() and b & B_AIE:
            alarm = self._next_alarm(s // h)
            if alarm is not None:
                best.append(alarm * h)
        return min(best) if best else None

    def _alarm_values(self, reg: int, limit: int, hours: bool = False) -> list[int]:
        v = self.ram[reg]
        if v & 0xC0 == 0xC0:
            return list(range(limit))  # "don't care" code
        if hours and not self.ram[REG_B] & B_24H:
            pm, v = bool(v & 0x80), self._dec(v & 0x7F)
            if not 1 <= v <= 12:
                return []
            v = v % 12 + (12 if pm else 0)
        else:
            v = self._dec(v)
        return [v] if 0 <= v < limit else []

    def _next_alarm(self, k: int) -> int | None:
        """The first whole virtual second after ``k`` whose time of day matches the alarm bytes."""
        hs, ms, ss = self._alarm_values(0x05, 24, True), self._alarm_values(0x03, 60), self._alarm_values(0x01, 60)
        if not (hs and ms and ss):
            return None
        cur = (EPOCH + k + self.offset) % 86400
        ch, cm, cs = cur // 3600, cur // 60 % 60, cur % 60
        for h in hs[bisect_right(hs, ch - 1):]:
            for m in (ms[bisect_right(ms, cm - 1):] if h == ch else ms[:1]):
                later = ss[bisect_right(ss, cs):] if (h, m) == (ch, cm) else ss
                if later:
                    return k + (h * 3600 + m * 60 + later[0]) - cur
        return k + 86400 - cur + hs[0] * 3600 + ms[0] * 60 + ss[0]
