"""Exit accounting (engine-free): what every vCPU exited for, counted by reason, MSR, hypercall, port, APIC register."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from viridian.state import Fields, counter_items

APIC_REG_NAMES = {0x20: "id", 0x30: "version", 0x80: "tpr", 0xA0: "ppr", 0xB0: "eoi", 0xD0: "ldr", 0xE0: "dfr",
                  0xF0: "svr", 0x280: "esr", 0x300: "icr_low", 0x310: "icr_high", 0x320: "lvt_timer",
                  0x380: "timer_initial", 0x390: "timer_current", 0x3E0: "timer_divide"}


@dataclass
class VcpuStats:
    """Counters of one vCPU."""

    by_reason: Counter[str] = field(default_factory=Counter)
    msr_reads: Counter[int] = field(default_factory=Counter)
    msr_writes: Counter[int] = field(default_factory=Counter)
    hypercalls: Counter[int] = field(default_factory=Counter)
    ports: Counter[int] = field(default_factory=Counter)
    apic_mmio: Counter[int] = field(default_factory=Counter)
    apic_msr: Counter[int] = field(default_factory=Counter)
    exceptions: Counter[int] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)  # not exits: yields honoured, idle entries, ...
    eoi_exits: int = 0
    icr_exits: int = 0
    tpr_exits: int = 0
    interrupts_delivered: int = 0
    ipis_sent: int = 0

    def exit(self, reason: str) -> None:
        self.by_reason[reason] += 1

    def apic_access(self, offset: int, via_msr: bool) -> None:
        (self.apic_msr if via_msr else self.apic_mmio)[offset] += 1
        if offset == 0xB0:
            self.eoi_exits += 1
        elif offset in (0x300, 0x310):
            self.icr_exits += 1  # every ICR access exits: xAPIC IPI = high + low write (+ status reads)
        elif offset == 0x80:
            self.tpr_exits += 1

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())

    # -- snapshots (viridian.state) ----------------------------------------------------------------------
    def save_state(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: counter_items(getattr(self, name)) for name in COUNTERS}
        out.update({name: getattr(self, name) for name in TOTALS})
        return out

    def load_state(self, f: Fields) -> None:
        counters = {name: Counter(f.counter(name, int_keys=name not in ("by_reason", "events")))
                    for name in COUNTERS}
        totals = {name: f.uint(name, 0, 1 << 63) for name in TOTALS}
        for name, value in (*counters.items(), *totals.items()):
            setattr(self, name, value)


COUNTERS = ("by_reason", "msr_reads", "msr_writes", "hypercalls", "ports", "apic_mmio", "apic_msr", "exceptions",
            "events")
TOTALS = ("eoi_exits", "icr_exits", "tpr_exits", "interrupts_delivered", "ipis_sent")


def _hex_keys(counter: Counter[int], width: int) -> dict[str, int]:
    return {f"{k:#0{width + 2}x}": v for k, v in sorted(counter.items())}


def _apic_keys(counter: Counter[int]) -> dict[str, int]:
    return {APIC_REG_NAMES.get(k, f"{k:#05x}"): v for k, v in sorted(counter.items())}


def vcpu_json(s: VcpuStats) -> dict[str, Any]:
    msrs = sorted(set(s.msr_reads) | set(s.msr_writes))
    return {
        "total": s.total,
        "by_reason": dict(sorted(s.by_reason.items())),
        "by_msr": {f"{m:#010x}": {"read": s.msr_reads[m], "write": s.msr_writes[m]} for m in msrs},
        "by_hypercall": _hex_keys(s.hypercalls, 4),
        "by_port": _hex_keys(s.ports, 4),
        "by_exception": {str(k): v for k, v in sorted(s.exceptions.items())},
        "events": dict(sorted(s.events.items())),
        "apic_registers": {"mmio": _apic_keys(s.apic_mmio), "msr": _apic_keys(s.apic_msr)},
    }


def merge(stats: list[VcpuStats]) -> VcpuStats:
    out = VcpuStats()
    for s in stats:
        for name in ("by_reason", "msr_reads", "msr_writes", "hypercalls", "ports", "apic_mmio", "apic_msr",
                     "exceptions", "events"):
            getattr(out, name).update(getattr(s, name))
        for name in ("eoi_exits", "icr_exits", "tpr_exits", "interrupts_delivered", "ipis_sent"):
            setattr(out, name, getattr(out, name) + getattr(s, name))
    return out
