"""High Precision Event Timer (IA-PC HPET Specification 1.0a), MMIO at 0xFED00000 (1 KiB), engine-free.

As QEMU's pc HPET (hw/timer/hpet.c): vendor 0x8086, revision 1, 3 timers, 64-bit main counter, legacy
replacement capable, period 10 ns (100 MHz); every timer periodic- and 64-bit-capable, no FSB delivery; the
allowed I/O APIC routes of each timer are ``intcap`` (QEMU pc: 0x4, pin 2 only). The counter is computed from
virtual time: ``ticks(now) = now * 100 MHz // tsc_hz``, ``counter = ticks + offset`` while enabled, frozen while
halted. Comparator matches are found in closed form between two points in time (``advance``), so an idle guest
costs nothing and the same guest sees the same interrupts whatever the scheduling quanta.

Interrupt outputs: legacy replacement (GEN_CONF.LEG_RT_CNF, §2.3.7) drives timer 0 on ISA IRQ 0 and timer 1 on
ISA IRQ 8 through the platform's ``irq`` sink; otherwise a timer drives I/O APIC input Tn_INT_ROUTE_CNF through
``gsi``. Level mode holds the line while the timer's GINTR_STA bit is set (write 1 to clear, §2.3.6); edge mode
pulses it per match. Register accesses of 1-8 bytes are composed from the 64-bit registers (QEMU accepts 4 and 8).
Hand-off state (QEMU reset): counter 0 and halted, legacy off, every timer disabled with comparator all-ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from viridian.devices.pc_api import IrqSink, Now, NullIrq

HPET_BASE: Final = 0xFED0_0000
HPET_SIZE: Final = 0x400
HPET_HZ: Final = 100_000_000
PERIOD_FS: Final = 10_000_000  # 10 ns in femtoseconds (GCAP_ID[63:32], §2.3.4)
TIMERS: Final = 3
VENDOR: Final = 0x8086
REVISION: Final = 1
QEMU_PC_INTCAP: Final = 0x4

# §2.3.4 General Capabilities and ID
CAP_COUNT_SIZE, CAP_LEG_RT = 1 << 13, 1 << 15
GCAP_ID: Final = PERIOD_FS << 32 | VENDOR << 16 | CAP_LEG_RT | CAP_COUNT_SIZE | (TIMERS - 1) << 8 | REVISION
# §2.3.5 General Configuration
ENABLE_CNF, LEG_RT_CNF = 1, 2
# §2.3.8 Timer N Configuration and Capabilities
INT_TYPE_CNF, INT_ENB_CNF, TYPE_CNF, PER_INT_CAP, SIZE_CAP, VAL_SET_CNF = 2, 4, 8, 16, 32, 64
MODE32_CNF, ROUTE_SHIFT, ROUTE_MASK = 1 << 8, 9, 0x1F << 9
CONF_WRITABLE: Final = INT_TYPE_CNF | INT_ENB_CNF | TYPE_CNF | VAL_SET_CNF | MODE32_CNF | ROUTE_MASK
REG_GCAP, REG_CONF, REG_ISR, REG_COUNTER = 0x000, 0x010, 0x020, 0x0F0
TIMER_BASE, TIMER_STRIDE = 0x100, 0x20
LEGACY_IRQ: Final = (0, 8)  # §2.3.7: timer 0 -> IRQ0 (I/O APIC pin 2 via the ISO), timer 1 -> IRQ8
M64: Final = (1 << 64) - 1


@dataclass
class HpetTimer:
    conf: int = PER_INT_CAP | SIZE_CAP
    cmp: int = M64  # QEMU resets comparators to all-ones
    period: int = 0  # the periodic accumulator's increment (§2.3.9.2.2)

    @property
    def width(self) -> int:
        return 32 if self.conf & MODE32_CNF else 64


@dataclass
class Hpet:
    """``now``: virtual time in TSC ticks; ``irq``: ISA lines (legacy replacement); ``gsi``: I/O APIC inputs
    (Tn_INT_ROUTE_CNF); ``intcap``: the route bitmap Tn_INT_ROUTE_CAP every timer reports."""

    now: Now
    tsc_hz: int
    irq: IrqSink = field(default_factory=NullIrq)
    gsi: Callable[[int, bool], None] | None = None
    intcap: int = QEMU_PC_INTCAP
    base: int = HPET_BASE
    conf: int = 0
    isr: int = 0
    frozen: int = 0  # the counter while halted
    offset: int = 0  # counter = ticks(now) + offset while enabled
    timers: list[HpetTimer] = field(default_factory=lambda: [HpetTimer() for _ in range(TIMERS)])
    _synced: int = 0  # ticks() up to which comparator matches have been processed
    _lines: dict[tuple[bool, int], bool] = field(default_factory=dict)  # (legacy ISA?, number) -> level
    gates: list[LegacyGate] = field(default_factory=list)

    def __post_init__(self) -> None:
        for t in self.timers:
            t.conf = t.conf & 0xFFFF_FFFF | (self.intcap & 0xFFFF_FFFF) << 32

    # -- time ------------------------------------------------------------------------------------------
    def ticks(self, now: int) -> int:
        return now * HPET_HZ // self.tsc_hz

    @property
    def enabled(self) -> bool:
        return bool(self.conf & ENABLE_CNF)

    def counter(self, now: int | None = None) -> int:
        if not self.enabled:
            return self.frozen
        return (self.ticks(self.now() if now is None else now) + self.offset) & M64

    def advance(self, now: int) -> None:
        """Process every comparator match in (last advance, now] (§2.3.9.2), then drive the lines."""
        t = self.ticks(now)
        if self.enabled and t > self._synced:
            start, n = (self._synced + self.offset) & M64, t - self._synced
            for i, tm in enumerate(self.timers):
                if self._matches(tm, start, n):
                    self._fire(i, tm)
        self._synced = max(self._synced, t)
        self._drive()

    def _matches(self, tm: HpetTimer, start: int, n: int) -> bool:
        """Whether the counter, moving from ``start`` by ``n`` ticks, matched the comparator (advancing a
        periodic comparator past it, §2.3.9.2.2); a 32-bit one-shot timer also matches at each wrap of the
        low 32 bits (§2.3.9.2.1)."""
        w = tm.width
        mod = 1 << w
        d = (tm.cmp - start) % mod or mod  # ticks until the next match (a full wrap if exactly at it)
        hit = d <= n
        if tm.conf & TYPE_CNF and tm.period % mod:
            if hit:
                k = 1 + (n - d) // (tm.period % mod)
                tm.cmp = (tm.cmp + k * (tm.period % mod)) % mod
        elif w == 32:
            hit = hit or (mod - start % mod) <= n
        return hit

    def _fire(self, i: int, tm: HpetTimer) -> None:
        if tm.conf & INT_TYPE_CNF:
            self.isr |= 1 << i  # §2.3.6: level mode status, set whether or not the interrupt is enabled
        elif tm.conf & INT_ENB_CNF:
            line = self._line(i, tm)
            level = self._lines.get(line, False)
            self._set_line(line, True)  # an edge pulse (QEMU qemu_irq_pulse)
            self._set_line(line, level)

    def next_deadline(self) -> int | None:
        """The TSC tick of the next match that changes an output (edge pulse, or a level status not yet set)."""
        if not self.enabled:
            return None
        best: int | None = None
        start = (self._synced + self.offset) & M64
        for i, tm in enumerate(self.timers):
            if not tm.conf & INT_ENB_CNF or (tm.conf & INT_TYPE_CNF and self.isr >> i & 1):
                continue
            mod = 1 << tm.width
            d = (tm.cmp - start) % mod or mod
            if tm.width == 32 and not (tm.conf & TYPE_CNF and tm.period % mod):  # as _matches: the wrap too
                d = min(d, mod - start % mod)
            best = d if best is None else min(best, d)
        if best is None:
            return None
        return -(-(self._synced + best) * self.tsc_hz // HPET_HZ)  # smallest tick with ticks() reaching it

    # -- interrupt lines -------------------------------------------------------------------------------
    def _line(self, i: int, tm: HpetTimer) -> tuple[bool, int]:
        if self.conf & LEG_RT_CNF and i < 2:
            return (True, LEGACY_IRQ[i])
        return (False, (tm.conf & ROUTE_MASK) >> ROUTE_SHIFT)

    def _set_line(self, line: tuple[bool, int], level: bool) -> None:
        if self._lines.get(line, False) == level:
            return
        self._lines[line] = level
        legacy, n = line
        if legacy:
            self.irq.set_irq(n, level)
        elif self.gsi is not None:
            self.gsi(n, level)

    def _drive(self) -> None:
        """Level lines: asserted while some level timer on them has its status set and interrupts enabled."""
        want: dict[tuple[bool, int], bool] = {line: False for line in self._lines}
        for i, tm in enumerate(self.timers):
            if tm.conf & INT_TYPE_CNF:
                line = self._line(i, tm)
                on = self.enabled and bool(tm.conf & INT_ENB_CNF and self.isr >> i & 1)
                want[line] = want.get(line, False) or on
        for line, level in want.items():
            self._set_line(line, level)

    # -- registers -------------------------------------------------------------------------------------
    def _reg(self, off: int) -> int:
        if off == REG_GCAP:
            return GCAP_ID
        if off == REG_CONF:
            return self.conf
        if off == REG_ISR:
            return self.isr
        if off == REG_COUNTER:
            return self.counter()
        i, r = divmod(off - TIMER_BASE, TIMER_STRIDE)
        if off >= TIMER_BASE and i < TIMERS:
            tm = self.timers[i]
            if r == 0:
                return tm.conf
            if r == 8:
                return tm.cmp & ((1 << tm.width) - 1)
        return 0  # reserved and FSB route registers read 0

    def mmio_read(self, offset: int, size: int) -> int:
        self.advance(self.now())
        off = offset & ~7
        if size not in (1, 2, 4, 8) or offset + size > off + 8 or not 0 <= offset < HPET_SIZE:
            return (1 << (8 * max(1, min(size, 8)))) - 1  # straddling or odd accesses: not decoded
        return (self._reg(off) >> (8 * (offset - off))) & ((1 << (8 * size)) - 1)

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        self.advance(self.now())
        off = offset & ~7
        if size not in (1, 2, 4, 8) or offset + size > off + 8 or not 0 <= offset < HPET_SIZE:
            return
        shift = 8 * (offset - off)
        mask = ((1 << (8 * size)) - 1) << shift
        self._write_reg(off, mask, (value << shift) & mask)
        self._drive()

    def _write_reg(self, off: int, mask: int, val: int) -> None:
        if off == REG_CONF:
            self._write_conf((self.conf & ~mask | val) & (ENABLE_CNF | LEG_RT_CNF))
        elif off == REG_ISR:
            self.isr &= ~val  # §2.3.6: write 1 to clear a level-mode status bit
        elif off == REG_COUNTER:
            if not self.enabled:  # §2.3.7: written only while halted (QEMU drops writes while running)
                self.frozen = self.frozen & ~mask | val
        elif off >= TIMER_BASE and (off - TIMER_BASE) // TIMER_STRIDE < TIMERS:
            i, r = divmod(off - TIMER_BASE, TIMER_STRIDE)
            tm = self.timers[i]
            if r == 0:
                self._write_timer_conf(i, tm, tm.conf & ~mask | val)
            elif r == 8:
                self._write_cmp(tm, mask, val)
        # GCAP_ID, FSB route and reserved registers are read-only here

    def _write_conf(self, new: int) -> None:
        now = self.now()
        if new & ENABLE_CNF and not self.enabled:  # §2.3.5: the counter starts from its halted value
            self._synced = self.ticks(now)
            self.offset = (self.frozen - self._synced) & M64
        elif self.enabled and not new & ENABLE_CNF:
            self.frozen = self.counter(now)
        if (new ^ self.conf) & LEG_RT_CNF:  # routes change: release every line first
            for line in list(self._lines):
                self._set_line(line, False)
            for g in self.gates:
                g.switch(bool(new & LEG_RT_CNF))
        self.conf = new

    def gate(self, sink: IrqSink) -> LegacyGate:
        """An IrqSink for a device legacy replacement silences (the RTC, the PIT), in front of ``sink``."""
        g = LegacyGate(sink)
        g.legacy = bool(self.conf & LEG_RT_CNF)
        self.gates.append(g)
        return g

    def _write_timer_conf(self, i: int, tm: HpetTimer, new: int) -> None:
        """§2.3.8: writable bits only; a route outside Tn_INT_ROUTE_CAP is not taken (reads back unchanged);
        leaving level mode drops the status bit's line."""
        route = (new & ROUTE_MASK) >> ROUTE_SHIFT
        if not self.intcap >> route & 1:
            new = new & ~ROUTE_MASK | tm.conf & ROUTE_MASK
        old_line = self._line(i, tm)
        if tm.conf & INT_TYPE_CNF and not new & INT_TYPE_CNF:
            self.isr &= ~(1 << i)  # back to edge mode: the status bit has no meaning (QEMU clears it)
        tm.conf = tm.conf & ~CONF_WRITABLE | new & CONF_WRITABLE
        if tm.conf & MODE32_CNF:  # a 64-bit timer forced to 32 bits keeps 32-bit values (QEMU)
            tm.cmp &= 0xFFFF_FFFF
            tm.period &= 0xFFFF_FFFF
        if old_line != self._line(i, tm) and self._lines.get(old_line):
            self._set_line(old_line, False)

    def _write_cmp(self, tm: HpetTimer, mask: int, val: int) -> None:
        """§2.3.9.2: one-shot writes set the comparator; periodic writes set the period, and the comparator
        too while VAL_SET is set (QEMU: the value falls through to both), which then clears itself."""
        if tm.width == 32:
            mask &= 0xFFFF_FFFF
            val &= mask
            if not mask:
                return
        if not tm.conf & TYPE_CNF or tm.conf & VAL_SET_CNF:
            tm.cmp = tm.cmp & ~mask | val
        tm.period = tm.period & ~mask | val
        tm.conf &= ~VAL_SET_CNF

    # -- snapshots ---------------------------------------------------------------------------------------
    def save_state(self) -> dict[str, Any]:
        return {"conf": self.conf, "isr": self.isr, "frozen": self.frozen, "offset": self.offset,
                "synced": self._synced, "timers": [[t.conf, t.cmp, t.period] for t in self.timers],
                "lines": [[legacy, n, level] for (legacy, n), level in self._lines.items()],
                "gates": [[[irq, level] for irq, level in g.levels.items()] for g in self.gates]}

    def load_state(self, state: dict[str, Any]) -> None:
        def num(v: Any, limit: int, what: str) -> int:
            if type(v) is not int or not 0 <= v < limit:
                raise ValueError(f"hpet state: bad {what}: {v!r}")
            return v

        timers = state.get("timers")
        lines = state.get("lines")
        if not isinstance(timers, list) or len(timers) != TIMERS or not isinstance(lines, list):
            raise ValueError("hpet state: 'timers' must list 3 timers and 'lines' must be a list")
        conf = num(state.get("conf"), 4, "conf")
        isr = num(state.get("isr"), 1 << TIMERS, "isr")
        vals = [num(state.get(k), 1 << 64, k) for k in ("frozen", "offset", "synced")]
        parsed = []
        for t in timers:
            if not isinstance(t, list) or len(t) != 3:
                raise ValueError("hpet state: a timer is [conf, cmp, period]")
            c, cmp_, per = (num(x, 1 << 64, "timer field") for x in t)
            if (c ^ (PER_INT_CAP | SIZE_CAP | (self.intcap & 0xFFFF_FFFF) << 32)) & ~CONF_WRITABLE:
                raise ValueError("hpet state: timer capability bits differ")
            parsed.append(HpetTimer(c, cmp_, per))
        new_lines: dict[tuple[bool, int], bool] = {}
        for ln in lines:
            if not isinstance(ln, list) or len(ln) != 3 or type(ln[0]) is not bool or type(ln[2]) is not bool:
                raise ValueError("hpet state: a line is [legacy, number, level]")
            new_lines[(ln[0], num(ln[1], 32, "line"))] = ln[2]
        gates = state.get("gates")
        if not isinstance(gates, list) or len(gates) != len(self.gates):
            raise ValueError(f"hpet state: 'gates' must list {len(self.gates)} gates")
        gate_levels: list[dict[int, bool]] = []
        for g in gates:
            if not isinstance(g, list) or len(g) > 16:
                raise ValueError("hpet state: a gate is a list of [irq, level]")
            levels: dict[int, bool] = {}
            for item in g:
                if not isinstance(item, list) or len(item) != 2 or type(item[1]) is not bool:
                    raise ValueError("hpet state: a gate line is [irq, level]")
                levels[num(item[0], 16, "gate irq")] = item[1]
            gate_levels.append(levels)
        self.conf, self.isr = conf, isr
        self.frozen, self.offset, self._synced = vals
        self.timers, self._lines = parsed, new_lines
        for g, levels in zip(self.gates, gate_levels, strict=True):
            g.legacy, g.levels = bool(conf & LEG_RT_CNF), levels


def hpet_acpi_table_body(base: int = HPET_BASE) -> bytes:
    """The body (after the 36-byte header) of the ACPI "HPET" table (IA-PC HPET spec §3.2.4, QEMU build_hpet):
    event timer block ID (GCAP_ID[31:0]), base address GAS in system memory, HPET number 0, minimum periodic
    tick 0, page protection 0."""
    import struct

    gas = struct.pack("<BBBBQ", 0, 0, 0, 0, base)  # SystemMemory (widths 0 as QEMU writes them)
    return struct.pack("<I", GCAP_ID & 0xFFFF_FFFF) + gas + struct.pack("<BHB", 0, 0, 0)


class LegacyGate:
    """An IrqSink in front of a device whose output legacy replacement takes over (the RTC's IRQ 8, the PIT's
    IRQ 0; make one with :meth:`Hpet.gate`): lines pass through while LEG_RT_CNF is clear, are dropped when it is
    set and get their device's level back when it clears again (QEMU hpet.c hpet_handle_legacy_irq)."""

    def __init__(self, sink: IrqSink) -> None:
        self.sink = sink
        self.legacy = False
        self.levels: dict[int, bool] = {}

    def set_irq(self, irq: int, level: bool) -> None:
        self.levels[irq] = level
        if not self.legacy:
            self.sink.set_irq(irq, level)

    def switch(self, legacy: bool) -> None:
        """LEG_RT_CNF changed: drop the device's raised lines, or give them back."""
        self.legacy = legacy
        for irq, level in self.levels.items():
            if level:
                self.sink.set_irq(irq, not legacy)
