"""The local APIC timer (Intel SDM vol. 3 §11.5.4) on the partition's virtual TSC, with no host time.

The counter is never stepped: its value is a pure function of ``clock.tsc()`` and a base point, so
reads are exact and reproducible. A divided timer tick lasts ``divisor`` APIC bus cycles; elapsed bus
cycles are ``floor((tsc - base) * apic_hz / tsc_hz)``. The k-th expiry is therefore at the smallest TSC
``t`` with ``(t - base) * apic_hz >= ticks * divisor * tsc_hz``.

Any change of the timer configuration first processes due expirations under the old configuration
(``sync`` in the APIC), then re-bases the counter at the current count; fractional tick progress is
dropped at that point (deterministic, as precise as the guest can observe).
"""

from __future__ import annotations

from typing import Any

from viridian.clock import VirtualClock
from viridian.devices.lapic_defs import MASK32, MASK64, TimerMode, timer_divisor
from viridian.state import Fields


class ApicTimer:
    """Counter/deadline state of one local APIC timer. The APIC owns delivery (LVT timer entry)."""

    __slots__ = ("_base", "_base_count", "_fired", "_running", "clock", "dcr", "deadline", "initial", "mode",
                 "tsc_offset")

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.tsc_offset = 0  # guest TSC = (clock.tsc() + tsc_offset) mod 2**64 (IA32_TSC / TSC_ADJUST)
        self.reset()

    def reset(self) -> None:
        """§11.4.7.1: initial/current count and divide configuration are zero, timer idle."""
        self.mode = TimerMode.ONE_SHOT
        self.dcr = 0
        self.initial = 0
        self.deadline = 0
        self._base = 0
        self._base_count = 0
        self._fired = 0
        self._running = False

    # -- time arithmetic ----------------------------------------------------------------------------
    @property
    def divisor(self) -> int:
        return timer_divisor(self.dcr)

    def guest_tsc(self, now: int) -> int:
        return (now + self.tsc_offset) & MASK64

    def _ticks(self, now: int) -> int:
        clk = self.clock
        return (now - self._base) * clk.apic_hz // (clk.tsc_hz * self.divisor)

    def _tsc_after_ticks(self, ticks: int) -> int:
        """Host TSC at which ``ticks`` divided ticks have elapsed since the base (ceiling division)."""
        clk = self.clock
        return self._base + -(-(ticks * self.divisor * clk.tsc_hz) // clk.apic_hz)

    def _counting(self) -> bool:
        return self._running and self.mode in (TimerMode.ONE_SHOT, TimerMode.PERIODIC)

    # -- guest-visible values -----------------------------------------------------------------------
    def current_count(self, now: int) -> int:
        """Current-count register: 0 when idle and always 0 in TSC-deadline mode (§11.5.4.1)."""
        if not self._counting():
            return 0
        k = self._ticks(now)
        if k < self._base_count:
            return self._base_count - k
        if self.mode == TimerMode.ONE_SHOT:
            return 0
        return self.initial - (k - self._base_count) % self.initial  # periodic: reloads on reaching 0

    def read_deadline(self) -> int:
        """IA32_TSC_DEADLINE reads 0 outside TSC-deadline mode (§11.5.4.1)."""
        return self.deadline if self.mode == TimerMode.TSC_DEADLINE else 0

    # -- configuration (the APIC syncs expirations before calling these) ----------------------------
    def _rebase(self, now: int) -> None:
        count = self.current_count(now)
        self._base, self._base_count, self._fired = now, count, 0
        self._running = self._running and count != 0

    def set_initial(self, now: int, value: int) -> None:
        """Writing the initial count (re)starts counting from it; 0 stops the timer (§11.5.4)."""
        if self.mode == TimerMode.TSC_DEADLINE:
            return  # §11.5.4.1: ignored in TSC-deadline mode
        self.initial = value & MASK32
        self._base, self._base_count, self._fired = now, self.initial, 0
        self._running = self.initial != 0

    def set_dcr(self, now: int, value: int) -> None:
        self._rebase(now)
        self.dcr = value

    def set_mode(self, now: int, mode: TimerMode) -> None:
        """Changing the timer mode; moving into or out of TSC-deadline mode disarms the timer (§11.5.4.1,
        KVM apic_update_lvtt also clears the initial count and the deadline)."""
        if mode == self.mode:
            return
        if (mode == TimerMode.TSC_DEADLINE) != (self.mode == TimerMode.TSC_DEADLINE):
            self.initial = self.deadline = 0
            self._running = False
        else:
            self._rebase(now)
        self.mode = mode

    def set_deadline(self, value: int) -> None:
        """Non-zero arms, zero disarms; ignored outside TSC-deadline mode (§11.5.4.1)."""
        if self.mode == TimerMode.TSC_DEADLINE:
            self.deadline = value & MASK64

    # -- expirations --------------------------------------------------------------------------------
    def next_expiry(self, now: int) -> int | None:
        """Host TSC of the next expiry (may be <= now when one is due), or None when idle."""
        if self.mode == TimerMode.TSC_DEADLINE:
            if not self.deadline:
                return None
            guest = self.guest_tsc(now)
            return now + (self.deadline - guest) if self.deadline > guest else now
        if not self._counting():
            return None
        return self._tsc_after_ticks(self._base_count + self._fired * self.initial)

    def expire(self, now: int) -> bool:
        """Account every expiry due at ``now``; True if at least one happened (one interrupt: the IRR
        bit coalesces). One-shot and TSC-deadline timers disarm themselves when they fire."""
        if self.mode == TimerMode.TSC_DEADLINE:
            if self.deadline and self.guest_tsc(now) >= self.deadline:
                self.deadline = 0
                return True
            return False
        if not self._counting():
            return False
        k = self._ticks(now)
        if k < self._base_count + self._fired * self.initial:
            return False
        if self.mode == TimerMode.ONE_SHOT:
            self._running = False
        else:
            self._fired = (k - self._base_count) // self.initial + 1
        return True

    # -- snapshots (viridian.state) ----------------------------------------------------------------------
    def save_state(self) -> dict[str, Any]:
        return {"tsc_offset": self.tsc_offset, "mode": int(self.mode), "dcr": self.dcr, "initial": self.initial,
                "deadline": self.deadline, "base": self._base, "base_count": self._base_count,
                "fired": self._fired, "running": self._running}

    def load_state(self, f: Fields) -> None:
        """§11.5.4: 32-bit counts and divide configuration (bits 0, 1, 3), 64-bit deadline and offset."""
        values = (f.uint("tsc_offset"), TimerMode(f.uint("mode", 0, 3)), f.uint("dcr", 0, 0xB),
                  f.uint("initial", 0, MASK32), f.uint("deadline"), f.uint("base", 0, (1 << 63) - 1),
                  f.uint("base_count", 0, MASK32), f.uint("fired", 0, (1 << 63) - 1), f.flag("running"))
        (self.tsc_offset, self.mode, self.dcr, self.initial, self.deadline, self._base, self._base_count,
         self._fired, self._running) = values
