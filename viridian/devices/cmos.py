"""CMOS RAM and real-time clock (Motorola MC146818A / the PC's "RTC", ports 0x70 index, 0x71 data), engine-free.

Registers (MC146818A data sheet, "Address map"): 0x00-0x09 time/date/alarm, 0x0A-0x0D status A-D, then
general-purpose RAM up to 0x7F (0x32: century, the ACPI FADT CENTURY default). The time is derived from a
fixed epoch plus the virtual clock, so a run is deterministic. The update cycle is modelled as instantaneous:
status A's UIP bit (update in progress) reads 0 and every read sees a consistent time. Periodic, alarm and
update-ended interrupts are not generated (no IRQ 8 wiring: the machine has no I/O APIC); status C reads 0.
Port 0x70 bit 7 is the NMI-disable latch of the PC chipset: kept, it masks nothing here.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from viridian.state import Fields

INDEX_PORT: Final = 0x70
DATA_PORT: Final = 0x71
EPOCH: Final = calendar.timegm((2025, 1, 1, 0, 0, 0, 0, 0, 0))  # 2025-01-01T00:00:00Z at virtual time 0
REG_A, REG_B, REG_C, REG_D = 0x0A, 0x0B, 0x0C, 0x0D
CENTURY: Final = 0x32
B_24H, B_BINARY, B_SET = 1 << 1, 1 << 2, 1 << 7
D_VRT: Final = 1 << 7  # valid RAM and time
A_DEFAULT: Final = 0x26  # 32.768 kHz time base, 1024 Hz periodic rate (power-on value BIOSes program)


@dataclass
class Cmos:
    """``seconds``: the virtual time in seconds since the machine started."""

    seconds: Callable[[], float]
    index: int = 0
    nmi_disabled: bool = False
    ram: bytearray = field(default_factory=lambda: bytearray(128))
    offset: int = 0  # seconds the guest moved the clock by (writes with status B SET)

    def __post_init__(self) -> None:
        self.ram[REG_A], self.ram[REG_B], self.ram[REG_D] = A_DEFAULT, B_24H, D_VRT

    def read(self, port: int, size: int) -> int:
        if port == INDEX_PORT:
            return 0xFF  # the index register is write-only on the PC (reads float)
        return self._read(self.index)

    def write(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        if port == INDEX_PORT:
            self.index, self.nmi_disabled = value & 0x7F, bool(value & 0x80)
            return
        self._write(self.index, value)

    # -- snapshots (viridian.state) ----------------------------------------------------------------------
    def save_state(self) -> dict[str, Any]:
        return {"index": self.index, "nmi_disabled": self.nmi_disabled, "ram": self.ram.hex(), "offset": self.offset}

    def load_state(self, state: dict[str, Any]) -> None:
        """A 7-bit index, 128 bytes of CMOS RAM, the guest's clock offset (within years 0..9999)."""
        f = Fields(state, "cmos")
        ram = f.blob("ram", 128)
        if len(ram) != 128:
            raise ValueError("cmos.ram: expected 128 bytes")
        values = (f.uint("index", 0, 0x7F), f.flag("nmi_disabled"), f.uint("offset", -(1 << 40), 1 << 40))
        self.index, self.nmi_disabled, self.offset = values
        self.ram = bytearray(ram)

    # -- registers ----------------------------------------------------------------------------------------
    def _now(self) -> tuple[int, ...]:
        tm = time.gmtime(EPOCH + int(self.seconds()) + self.offset)
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
        if reg == REG_C:
            return 0  # no interrupt flags: periodic/alarm/update interrupts are not generated
        return self.ram[reg]

    def _write(self, reg: int, value: int) -> None:
        time_regs = {0x00: 0, 0x02: 1, 0x04: 2, 0x07: 4, 0x08: 5, 0x09: 6}
        if reg in time_regs:
            self._set_field(time_regs[reg], value)
        elif reg == REG_A:
            self.ram[REG_A] = value & 0x7F
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
        self.offset += target - (EPOCH + int(self.seconds()) + self.offset)
