"""APIC assist: EOI avoidance through the VP assist page (TLFS virtual-interrupts.md "EOI Assist", §10).

The u32 at offset 0 of the VP assist page holds NoEoiRequired (bit 0). A guest EOIs by atomically clearing
the bit (``btr``); if it was set it skips the EOI write, otherwise it writes the EOI register as usual.

Eligibility (TLFS): the bit may accompany an injected interrupt only if the assist page is enabled, the
interrupt is edge-triggered, and no lower-priority interrupt is pending; if one becomes pending later the
bit is withdrawn so that the next EOI exits. With nested interrupts only the highest one (the one the next
EOI retires) may skip, because the page has one bit and no EOI count. "Lower priority" uses the APIC's own
rule: a pending vector whose priority class (vector >> 4) is not above the in-service one stays blocked
until that EOI (Xen: "<= priority class"). ``require_sole_isr`` adds Xen's stricter rule (nothing else in
service); the default follows the TLFS and KVM (the newest in-service vector may skip).

Publication follows OpenVMM: the bit is written just before the VP runs (:meth:`before_run`) and read
back and cleared after it stops (:meth:`after_run`). A bit the guest cleared means it skipped the EOI: the
model retires the in-service vector then (``apic.eoi()``), before any new priority decision (Xen does the
same before its next IRR/ISR compare).

Machine call order per VP (the interrupt-injection path):

1. after every return from guest code: ``vp.after_run()`` (settles the bit, retires a skipped EOI);
2. before deciding what to inject: ``vp.assist.retire_lazy_eoi()`` (same settling, idempotent; needed
   when something else looked at the VP since it last ran);
3. ``vector = apic.pending_vector()``; when it can be delivered: ``apic.acknowledge()`` then
   ``vp.assist.on_inject(vector)``, then deliver through the IDT;
4. right before resuming guest code: ``vp.before_run()`` (publishes NoEoiRequired if still eligible).

IRR changes (new interrupts) must happen while the VP is stopped, or the machine must stop it (kick), so
that (4) re-checks eligibility. ``eois_avoided`` counts EOIs the guest skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol, cast

from viridian.abi.memory import GuestMemoryError
from viridian.state import Fields
from viridian.tlfs.msrs import APIC_ASSIST_NO_EOI_REQUIRED, PAGE_ENABLE, PAGE_GPFN_SHIFT

if TYPE_CHECKING:
    from viridian.partition.vp import VirtualProcessor

log = logging.getLogger(__name__)


class AssistApic(Protocol):
    """The local-APIC queries EOI avoidance needs (viridian.devices.lapic implements them)."""

    def eoi(self) -> None: ...

    def is_level(self, vector: int) -> bool: ...

    def isr_vectors(self) -> Iterable[int]: ...

    def irr_vectors(self) -> Iterable[int]: ...

    def highest_isr(self) -> int | None: ...


class ApicAssist:
    """Per-VP EOI-avoidance state machine."""

    require_sole_isr: bool = False  # True = Xen rule: only when nothing else is in service

    def __init__(self, vp: VirtualProcessor) -> None:
        self.vp = vp
        self.eois_avoided = 0  # EOIs the guest skipped (read by the exit measurements)
        self.published = 0  # times the bit was handed to the guest
        self._candidate: int | None = None  # injected vector that may skip its EOI
        self._armed: int | None = None  # vector whose bit is in the page right now

    # -- state -------------------------------------------------------------------------------------------
    @property
    def page_gpa(self) -> int | None:
        """GPA of the enabled VP assist page, else None."""
        msr = self.vp.vp_assist_msr
        return (msr >> PAGE_GPFN_SHIFT) << PAGE_GPFN_SHIFT if msr & PAGE_ENABLE else None

    @property
    def active(self) -> bool:
        """The page is enabled, EOI avoidance is offered (Xen: the apic_assist group; QEMU: always with
        hv-vapic) and there is a local APIC whose EOIs can be avoided."""
        return self.vp.partition.config.apic_assist and self.page_gpa is not None and self.vp.apic is not None

    @property
    def candidate(self) -> int | None:
        return self._candidate

    @property
    def armed(self) -> int | None:
        return self._armed

    # -- snapshots (viridian.state) ----------------------------------------------------------------------
    def save_state(self) -> dict[str, Any]:
        return {"eois_avoided": self.eois_avoided, "published": self.published, "candidate": self._candidate,
                "armed": self._armed}

    def load_state(self, f: Fields) -> None:
        """Counters and the candidate/armed vectors (0..255 or none)."""
        values = (f.uint("eois_avoided", 0, 1 << 63), f.uint("published", 0, 1 << 63),
                  f.opt_uint("candidate", 0, 255), f.opt_uint("armed", 0, 255))
        self.eois_avoided, self.published, self._candidate, self._armed = values

    def _apic(self) -> AssistApic:
        return cast(AssistApic, self.vp.apic)

    def reset(self) -> None:
        """VP reset: nothing pending, counters kept (they measure the whole run)."""
        self._candidate = self._armed = None

    # -- the page word -----------------------------------------------------------------------------------
    def _read_word(self) -> int | None:
        gpa = self.page_gpa
        if gpa is None:
            return None
        try:
            return int.from_bytes(self.vp.partition.memory.read(gpa, 4), "little")
        except GuestMemoryError:
            return None

    def _write_word(self, value: int) -> None:
        gpa = self.page_gpa
        if gpa is not None:
            try:
                self.vp.partition.memory.write(gpa, (value & 0xFFFFFFFF).to_bytes(4, "little"))
            except GuestMemoryError:
                log.warning("VP %d: assist page at %#x is outside RAM", self.vp.index, gpa)

    # -- eligibility -------------------------------------------------------------------------------------
    def eligible(self, vector: int) -> bool:
        """TLFS: page enabled, edge-triggered, ``vector`` is the in-service vector the next EOI retires,
        and no pending vector of the same or a lower priority class waits for that EOI."""
        if not self.active:
            return False
        apic = self._apic()
        if apic.is_level(vector) or apic.highest_isr() != vector:
            return False  # level-triggered EOIs must reach the APIC (IOAPIC remote IRR)
        if self.require_sole_isr and list(apic.isr_vectors()) != [vector]:
            return False
        return not any(pending >> 4 <= vector >> 4 for pending in apic.irr_vectors())

    # -- machine API -------------------------------------------------------------------------------------
    def on_inject(self, vector: int) -> None:
        """Right after ``apic.acknowledge()`` moved ``vector`` into service: decide whether its EOI may
        be skipped. A newer injection always replaces the older candidate (only the highest may skip)."""
        if self._armed is not None:
            raise RuntimeError("ApicAssist: retire_lazy_eoi()/after_run() must precede the next injection")
        self._candidate = vector if self.eligible(vector) else None

    def before_run(self) -> None:
        """Publish NoEoiRequired for the candidate if it is still eligible (TLFS: a lower-priority
        interrupt that became pending meanwhile withdraws it for good)."""
        if self._armed is not None or self._candidate is None:
            return
        if not self.eligible(self._candidate):
            self._candidate = None
            return
        word = self._read_word()
        if word is None:
            return
        self._write_word(word | APIC_ASSIST_NO_EOI_REQUIRED)
        self._armed = self._candidate
        self.published += 1

    def after_run(self) -> None:
        """Read the bit back: cleared by the guest = it skipped the EOI, so retire the vector now;
        still set = take it back (re-published by the next :meth:`before_run` if still eligible)."""
        self.retire_lazy_eoi()

    def retire_lazy_eoi(self) -> bool:
        """Settle a published bit; True when a skipped EOI was retired (``apic.eoi()``)."""
        vector, self._armed = self._armed, None
        if vector is None:
            return False
        word = self._read_word()
        if word is None:  # page unreadable: cannot tell, so never retire on a guess
            return False
        if word & APIC_ASSIST_NO_EOI_REQUIRED:
            self._write_word(word & ~APIC_ASSIST_NO_EOI_REQUIRED)
            return False
        self._candidate = None
        if self.vp.apic is not None:
            self._apic().eoi()
            self.eois_avoided += 1
        return True

    def conventional_eoi(self) -> None:
        """An EOI through HV_X64_MSR_EOI: settle the bit first, then retire the highest in-service
        vector; a candidate retired this way can no longer skip."""
        self.retire_lazy_eoi()
        apic = self._apic()
        if apic.highest_isr() == self._candidate:
            self._candidate = None
        apic.eoi()

    def set_page_msr(self, new_msr: int) -> None:
        """Before HV_X64_MSR_VP_ASSIST_PAGE changes: settle against the old page, then (on enable)
        zero the ApicAssist word of the new page like KVM (the rest of the page is preserved)."""
        self.retire_lazy_eoi()
        self._candidate = None
        self.vp.vp_assist_msr = new_msr
        if new_msr & PAGE_ENABLE:
            self._write_word(0)
