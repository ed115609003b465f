"""Deterministic virtual time: one virtual TSC per partition that the machine advances explicitly.

Reference time (TLFS §12.4, 100 ns units) is always derived through the reference-TSC-page formula
``((tsc * scale) >> 64) + offset`` with ``scale = floor(2**64 * 10**7 / tsc_hz)``, so the MSR and the
page can never disagree (KVM get_time_ref_counter does the same when the page is valid).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from viridian.state import Fields

DEFAULT_TSC_HZ = 2_000_000_000
DEFAULT_APIC_HZ = 1_000_000_000  # KVM APIC bus: 1 ns per tick (HV_X64_MSR_APIC_FREQUENCY)
REF_HZ = 10_000_000  # 100 ns


def tsc_scale(tsc_hz: int) -> int:
    """TscScale of the reference TSC page for a TSC running at ``tsc_hz`` (TLFS §12.7.3)."""
    return (REF_HZ << 64) // tsc_hz


@dataclass
class VirtualClock:
    """Virtual TSC of a partition. Nothing reads host time: runs are reproducible."""

    tsc_hz: int = DEFAULT_TSC_HZ
    apic_hz: int = DEFAULT_APIC_HZ
    _tsc: int = field(default=0, repr=False)

    @property
    def scale(self) -> int:
        return tsc_scale(self.tsc_hz)

    def tsc(self) -> int:
        return self._tsc

    def set_tsc(self, value: int) -> None:
        if value < self._tsc:
            raise ValueError("virtual TSC never goes backwards")
        self._tsc = value

    def catch_up(self, value: int) -> None:
        """Bring the clock up to ``value`` if it is later (a vCPU's time at an exit; never backwards)."""
        if value > self._tsc:
            self._tsc = value

    def advance_tsc(self, ticks: int) -> None:
        self.set_tsc(self._tsc + max(0, ticks))

    def advance_ns(self, ns: int) -> None:
        self.advance_tsc(ns * self.tsc_hz // 1_000_000_000)

    def ref_time(self) -> int:
        """Partition reference time in 100 ns units (offset 0: counts from partition creation)."""
        return (self._tsc * self.scale) >> 64

    def tsc_for_ref_time(self, ref: int) -> int:
        """Smallest TSC value whose reference time is >= ``ref`` (to schedule deadlines)."""
        scale = self.scale
        t = (ref << 64) // scale
        while (t * scale) >> 64 < ref:
            t += 1
        return t

    def ns(self) -> int:
        return self._tsc * 1_000_000_000 // self.tsc_hz

    # -- snapshots (viridian.state) ----------------------------------------------------------------------
    def save_state(self) -> dict[str, Any]:
        return {"tsc_hz": self.tsc_hz, "apic_hz": self.apic_hz, "tsc": self._tsc}

    def load_state(self, state: dict[str, Any]) -> None:
        f = Fields(state, "clock")
        self.tsc_hz = f.uint("tsc_hz", 1_000_000, 1 << 40)  # 1 MHz .. ~1 THz
        self.apic_hz = f.uint("apic_hz", 1_000, 1 << 40)
        self._tsc = f.uint("tsc", 0, (1 << 63) - 1)
