"""Local APIC register map (Intel SDM vol. 3 Table 11-1 xAPIC, Table 11-6 x2APIC): who exists in which
mode, which bits are writable, how each register reads."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from msr.apic import (
    APIC_APR,
    APIC_DFR,
    APIC_EOI,
    APIC_ESR,
    APIC_ICR_HIGH,
    APIC_ICR_LOW,
    APIC_ID,
    APIC_IRR,
    APIC_ISR,
    APIC_LDR,
    APIC_PPR,
    APIC_RRD,
    APIC_SELF_IPI,
    APIC_SVR,
    APIC_TIMER_CURRENT,
    APIC_TIMER_DIVIDE,
    APIC_TIMER_INITIAL,
    APIC_TMR,
    APIC_TPR,
    APIC_VERSION,
)
from viridian.devices.lapic_defs import (
    DCR_WRITABLE,
    ICR_HIGH_XAPIC_WRITABLE,
    ICR_LOW_WRITABLE,
    LVT_WRITABLE,
    MASK32,
    SVR_WRITABLE,
)

if TYPE_CHECKING:
    from viridian.devices.lapic import LocalApic

# ISR/TMR/IRR: eight 32-bit registers each, 16 bytes apart; value = (bitmap name, register number).
BITMAP_REGS: Final[dict[int, tuple[str, int]]] = {
    base + 16 * i: (name, i) for base, name in ((APIC_ISR, "isr"), (APIC_TMR, "tmr"), (APIC_IRR, "irr"))
    for i in range(8)
}

# Writable bits per register in both modes (x2APIC: any other set bit except read-only ones -> #GP).
# EOI and ESR have no writable bits: x2APIC requires them to be written with 0 (Table 11-6).
WRITABLE: Final[dict[int, int]] = {
    APIC_TPR: 0xFF,
    APIC_EOI: 0,
    APIC_SVR: SVR_WRITABLE,
    APIC_ESR: 0,
    APIC_ICR_LOW: ICR_LOW_WRITABLE,
    APIC_TIMER_INITIAL: MASK32,
    APIC_TIMER_DIVIDE: DCR_WRITABLE,
    **LVT_WRITABLE,
}
# Writable only in xAPIC mode (read-only or absent in x2APIC mode). ID: KVM lets software change the
# xAPIC ID (§11.4.6 calls this model specific).
XAPIC_WRITABLE: Final[dict[int, int]] = {
    APIC_ID: 0xFF00_0000,
    APIC_LDR: 0xFF00_0000,
    APIC_DFR: 0xF000_0000,
    APIC_ICR_HIGH: ICR_HIGH_XAPIC_WRITABLE,
}
X2APIC_ABSENT: Final = frozenset({APIC_APR, APIC_RRD, APIC_DFR, APIC_ICR_HIGH})  # Table 11-6
WRITE_ONLY: Final = frozenset({APIC_EOI, APIC_SELF_IPI})

READERS: Final[dict[int, Callable[[LocalApic], int]]] = {
    APIC_ID: lambda a: a.apic_id if a.x2apic else a.apic_id << 24,
    APIC_VERSION: lambda a: a.version,
    APIC_TPR: lambda a: a.get_tpr(),
    APIC_APR: lambda a: a.apr,
    APIC_PPR: lambda a: a.ppr,
    APIC_EOI: lambda a: 0,  # write-only
    APIC_RRD: lambda a: 0,  # remote read is not supported
    APIC_LDR: lambda a: a.ldr,
    APIC_DFR: lambda a: a.dfr,
    APIC_SVR: lambda a: a.svr,
    APIC_ESR: lambda a: a.esr,
    APIC_ICR_LOW: lambda a: a.read_icr() & MASK32,
    APIC_ICR_HIGH: lambda a: a.read_icr() >> 32,
    APIC_TIMER_INITIAL: lambda a: a.timer.initial,
    APIC_TIMER_CURRENT: lambda a: a.timer.current_count(a.clock.tsc()),
    APIC_TIMER_DIVIDE: lambda a: a.timer.dcr,
    APIC_SELF_IPI: lambda a: 0,  # write-only, x2APIC only
}
