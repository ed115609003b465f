"""x2APIC MSR provider: the range 0x800-0x8FF routed to the context's local APIC (Intel SDM vol. 3
§11.12.1.2). MSR ``0x800 + n`` is the register at xAPIC offset ``n << 4``.

Outside x2APIC mode (xAPIC or globally disabled) every access in the range raises #GP (§11.12.1.2).
In x2APIC mode the APIC itself applies the register rules (absent/reserved -> #GP, write-only reads and
read-only writes -> #GP, reserved bits -> #GP, EOI/ESR must be written with 0); this provider adds the
64-bit view: the ICR (0x830) is one 64-bit register, every other register #GPs on bits 63:32 set.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol, TypeVar

from msr.apic import APIC_ICR_LOW, X2APIC_MSR_BASE, X2APIC_MSR_LAST, LocalApicPort
from msr.faults import Fault, GuestFault, gp
from msr.registry import NOT_MINE, ReadResult, WriteResult, _NotMine

log = logging.getLogger(__name__)
T = TypeVar("T")
X2APIC_ICR_MSR = X2APIC_MSR_BASE + (APIC_ICR_LOW >> 4)  # 0x830


def _call(fn: Callable[[], T], index: int) -> T | Fault:
    """Run an APIC access; GuestFault becomes its fault, a host bug becomes #GP and a log line."""
    try:
        return fn()
    except GuestFault as exc:
        return exc.fault
    except Exception:  # the host must never crash on guest input
        log.exception("x2APIC MSR %#x access raised; answering #GP", index)
        return gp(f"x2APIC MSR {index:#x}: internal error")


class HasApic(Protocol):
    """A context (typically a VP) that exposes its local APIC (None: the VP has no APIC -> #GP)."""

    @property
    def apic(self) -> LocalApicPort | None: ...


class X2ApicMsrs:
    """Provider for 0x800-0x8FF; NOT_MINE for any other index."""

    name = "x2apic"

    def rdmsr(self, ctx: HasApic, index: int) -> ReadResult | _NotMine:
        if not X2APIC_MSR_BASE <= index <= X2APIC_MSR_LAST:
            return NOT_MINE
        apic = ctx.apic
        if apic is None or not apic.x2apic:
            return gp(f"x2APIC MSR {index:#x} outside x2APIC mode")
        if index == X2APIC_ICR_MSR:
            return _call(apic.read_icr, index)
        offset = (index - X2APIC_MSR_BASE) << 4
        return _call(lambda: apic.read_register(offset), index)

    def wrmsr(self, ctx: HasApic, index: int, value: int) -> WriteResult | _NotMine:
        if not X2APIC_MSR_BASE <= index <= X2APIC_MSR_LAST:
            return NOT_MINE
        apic = ctx.apic
        if apic is None or not apic.x2apic:
            return gp(f"x2APIC MSR {index:#x} outside x2APIC mode")
        if index == X2APIC_ICR_MSR:
            res = _call(lambda: apic.write_icr(value), index)
        elif value >> 32:
            return gp(f"x2APIC MSR {index:#x}: bits 63:32 are reserved")  # §11.12.1.3
        else:
            offset = (index - X2APIC_MSR_BASE) << 4
            res = _call(lambda: apic.write_register(offset, value), index)
        return res if isinstance(res, Fault) else None


X2APIC_MSRS = X2ApicMsrs()

__all__ = ["X2APIC_ICR_MSR", "X2APIC_MSRS", "HasApic", "X2ApicMsrs"]
