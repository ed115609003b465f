"""Synthetic timers (TLFS §12.x "Synthetic timers"): four per VP, owned by the VP's SynIC.

Times are partition reference time (100 ns). A timer is *armed* (``deadline`` set), *pending* (expired,
its message not delivered yet: the slot was busy or the SIM unusable) or idle. Nothing fires here by
itself: :meth:`SynIC.poll` calls :meth:`SyntheticTimer.expire` once ``now >= deadline`` (never early).

Sources disagree in places; the choices (each cited at the code):
- Enable with SINTx == 0 in message mode: TLFS clears Enable whenever it is set so; KVM only when the
  timer *was* enabled before the write. We follow the TLFS.
- Busy slot: one-shot -> stays pending with MessagePending set, retried on EOM/EOI (TLFS, KVM);
  periodic -> the tick is dropped, no MessagePending (KVM stimer_send_msg "no_retry": avoids piling
  up periodic ticks; the TLFS allows lost periodic ticks).
- Periodic catch-up: next = the first ``expiration + k * period`` strictly after now, missed periods
  skipped (KVM stimer_start); the phase of the first period is kept.
- Direct mode: the APIC vector is asserted; if the APIC drops it (software-disabled) the tick is lost
  like an LVT timer's (KVM would leave the timer stuck pending until reprogrammed).
- Lazy (bit 2) is accepted and stored; delivery is never deferred (allowed: Lazy is only a hint).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from viridian.partition.message_queue import Delivery, SynicMessage
from viridian.state import Fields
from viridian.tlfs.hypercalls import HvMessageType
from viridian.tlfs.msrs import (
    STIMER_APIC_VECTOR_MASK,
    STIMER_APIC_VECTOR_SHIFT,
    STIMER_AUTO_ENABLE,
    STIMER_DIRECT_MODE,
    STIMER_ENABLE,
    STIMER_PERIODIC,
    STIMER_SINTX_MASK,
    STIMER_SINTX_SHIFT,
)
from viridian.tlfs.pages import HV_TIMER_MESSAGE_PAYLOAD

if TYPE_CHECKING:
    from viridian.partition.synic import SynIC

MASK64 = (1 << 64) - 1


class SyntheticTimer:
    """STIMERn_CONFIG / STIMERn_COUNT and the timer's dedicated message buffer."""

    def __init__(self, synic: SynIC, index: int) -> None:
        self.synic = synic
        self.index = index
        self.config = 0
        self.count = 0
        self.deadline: int | None = None  # armed: fires once reference time >= deadline
        self.pending = False  # expired; message waiting for the slot (dedicated buffer in use)
        self.expiration = 0  # ExpirationTime of the pending / last message
        self.fired = 0  # deliveries (diagnostics)
        self.dropped = 0  # periodic ticks dropped on a busy slot (diagnostics)

    # -- fields -------------------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return bool(self.config & STIMER_ENABLE)

    @property
    def periodic(self) -> bool:
        return bool(self.config & STIMER_PERIODIC)

    @property
    def direct(self) -> bool:
        return bool(self.config & STIMER_DIRECT_MODE)

    @property
    def sintx(self) -> int:
        return (self.config & STIMER_SINTX_MASK) >> STIMER_SINTX_SHIFT

    @property
    def vector(self) -> int:
        return (self.config & STIMER_APIC_VECTOR_MASK) >> STIMER_APIC_VECTOR_SHIFT

    @property
    def live(self) -> bool:
        """Armed or pending: poll has work for this timer."""
        return self.deadline is not None or self.pending

    def reset(self) -> None:
        """TLFS §12.x: CONFIG and COUNT reset to 0."""
        self.config = self.count = self.expiration = 0
        self._stop()

    # -- guest writes ---------------------------------------------------------------------------------
    def write_config(self, value: int, now: int) -> None:
        """New CONFIG (reserved/direct-mode checks were done by the MSR handler)."""
        self._stop()  # KVM stimer_cleanup: any write cancels the armed timer and a pending message
        # TLFS: enabling in message mode with SINTx == 0 clears Enable (KVM: only if it was enabled).
        if value & STIMER_ENABLE and not value & STIMER_DIRECT_MODE and not value & STIMER_SINTX_MASK:
            value &= ~STIMER_ENABLE
        self.config = value
        if self.enabled:
            self._arm(now)

    def write_count(self, value: int, now: int) -> None:
        """New COUNT: 0 disables; AutoEnable + non-zero enables (TLFS §12.x, KVM stimer_set_count)."""
        self._stop()
        self.count = value
        if value == 0:
            self.config &= ~STIMER_ENABLE
        elif self.config & STIMER_AUTO_ENABLE:
            self.config |= STIMER_ENABLE
        if self.enabled:
            self._arm(now)

    # -- expiry -----------------------------------------------------------------------------------------
    def expire(self, now: int) -> None:
        """The deadline passed (``now >= deadline``): take the dedicated buffer and try to deliver."""
        assert self.deadline is not None and now >= self.deadline
        self.expiration, self.deadline, self.pending = self.deadline, None, True
        self.retry(now)

    def retry(self, now: int) -> bool:
        """Deliver the pending expiry; True once it left the dedicated buffer."""
        if not self.pending:
            return False
        if self.direct:
            # TLFS §12.x direct mode: fixed interrupt ApicVector on this VP's local APIC, no message.
            self.synic.assert_vector(self.vector)
            done = True
        else:
            # TLFS §12.x HvMessageTimerExpired: {TimerIndex, Reserved, ExpirationTime, DeliveryTime}, 24 bytes.
            fields = {"timer_index": self.index, "reserved": 0, "expiration_time": self.expiration & MASK64,
                      "delivery_time": now & MASK64}  # TLFS: the count may wrap
            payload = bytes(HV_TIMER_MESSAGE_PAYLOAD.build(fields))
            msg = SynicMessage(HvMessageType.TIMER_EXPIRED, payload, 0)
            # KVM stimer_send_msg: periodic ticks are not retried (no MessagePending, tick dropped).
            outcome = self.synic.deliver_message(self.sintx, msg, no_retry=self.periodic)
            done = outcome in (Delivery.DELIVERED, Delivery.DROPPED)
            self.dropped += outcome is Delivery.DROPPED
        if not done:
            return False
        self.pending = False
        self.fired += 1
        if not self.periodic:
            self.config &= ~STIMER_ENABLE  # TLFS: a one-shot timer disables itself after expiring
        elif self.enabled and self.count:
            self._rearm_periodic(now)
        self.synic.timer_changed()
        return True

    # -- snapshots (viridian.state) ----------------------------------------------------------------------
    def save_state(self) -> dict[str, Any]:
        return {"config": self.config, "count": self.count, "deadline": self.deadline, "pending": self.pending,
                "expiration": self.expiration, "fired": self.fired, "dropped": self.dropped}

    def load_state(self, f: Fields) -> None:
        """TLFS §12.x: CONFIG/COUNT are u64 MSR values; deadlines and expirations are reference times."""
        values = (f.uint("config"), f.uint("count"), f.opt_uint("deadline"), f.flag("pending"),
                  f.uint("expiration"), f.uint("fired", 0, 1 << 63), f.uint("dropped", 0, 1 << 63))
        (self.config, self.count, self.deadline, self.pending, self.expiration, self.fired,
         self.dropped) = values

    # -- internals ----------------------------------------------------------------------------------------
    def _stop(self) -> None:
        self.deadline, self.pending = None, False
        self.synic.timer_changed()

    def _arm(self, now: int) -> None:
        if self.count == 0:
            return
        if self.periodic:
            self.deadline = now + self.count  # TLFS: the first period starts when the timer is enabled
        else:
            self.deadline = self.count  # TLFS: absolute; already past -> expires at once (next poll)
        self.synic.timer_changed()

    def _rearm_periodic(self, now: int) -> None:
        # KVM stimer_start: keep the period grid, skip every period already missed (never fire early).
        last = self.expiration
        if now < last + self.count:
            self.deadline = last + self.count
        else:
            self.deadline = now + (self.count - (now - last) % self.count)
