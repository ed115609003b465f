"""The interrupt fabric between the local APICs of a partition: IPI destination resolution and delivery.

Destinations (Intel SDM vol. 3 §11.6.2): physical (8-bit xAPIC ID / 32-bit x2APIC ID, all ones =
broadcast), logical flat or cluster (each target interprets the MDA with its own LDR/DFR), x2APIC
logical cluster (ID[31:16]) + 16-bit member bitmap (§11.12.10.2), and the shorthands self / all
including self / all excluding self. Globally disabled APICs take part in nothing.

Delivery choices, each deterministic:
* fixed and lowest-priority IPIs are edge-triggered whatever ICR bit 15 says (Table 11-3 note 2);
* lowest priority goes to the lowest-numbered software-enabled target (KVM only arbitrates among
  software-enabled APICs; real arbitration by APR is model specific);
* SMI and the reserved delivery modes are dropped; an INIT "level de-assert" (trigger level, level 0)
  is ignored (KVM), any other INIT resets the target APIC (``init()``) before ``on_init`` runs;
* shorthand/delivery-mode pairs Table 11-3 calls invalid are delivered as encoded (like KVM).

Callbacks the machine supplies: ``on_nmi(vp)``, ``on_init(vp)``, ``on_sipi(vp, vector)`` and
``on_kick(vp)`` — the latter whenever a target gained something pending (a new IRR bit, NMI, INIT, SIPI).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from viridian.clock import VirtualClock
from viridian.devices.lapic import LocalApic
from viridian.devices.lapic_defs import (
    ICR_DEST_LOGICAL,
    ICR_LEVEL_ASSERT,
    ICR_TRIGGER_LEVEL,
    X2APIC_BROADCAST,
    XAPIC_BROADCAST,
    DeliveryMode,
    Shorthand,
)
from viridian.state import Fields, StateError, counter_items

VpCallback = Callable[[int], None]
SipiCallback = Callable[[int, int], None]


class ApicBus:
    """Every VP's :class:`LocalApic`, indexed by VP index, plus IPI accounting."""

    def __init__(
        self,
        *,
        on_kick: VpCallback | None = None,
        on_nmi: VpCallback | None = None,
        on_init: VpCallback | None = None,
        on_sipi: SipiCallback | None = None,
    ) -> None:
        self.apics: list[LocalApic] = []
        self.on_kick = on_kick
        self.on_nmi = on_nmi
        self.on_init = on_init
        self.on_sipi = on_sipi
        self.ipis_sent: dict[int, int] = {}  # source VP index -> ICR/SELF-IPI sends

    @classmethod
    def create(
        cls,
        vp_count: int,
        clock: VirtualClock,
        *,
        on_kick: VpCallback | None = None,
        on_nmi: VpCallback | None = None,
        on_init: VpCallback | None = None,
        on_sipi: SipiCallback | None = None,
        on_eoi_broadcast: VpCallback | None = None,
    ) -> ApicBus:
        """A bus with ``vp_count`` fresh APICs (IDs 0..n-1) on ``clock``."""
        bus = cls(on_kick=on_kick, on_nmi=on_nmi, on_init=on_init, on_sipi=on_sipi)
        for vp in range(vp_count):
            bus.attach(LocalApic(vp, clock, on_eoi_broadcast=on_eoi_broadcast))
        return bus

    def attach(self, apic: LocalApic) -> None:
        """Add the APIC of the next VP (VP indices are dense, attached in order)."""
        if apic.vp_index != len(self.apics):
            raise ValueError(f"expected the APIC of VP {len(self.apics)}, got VP {apic.vp_index}")
        apic.bus = self
        self.apics.append(apic)

    def __getitem__(self, vp: int) -> LocalApic:
        return self.apics[vp]

    def __len__(self) -> int:
        return len(self.apics)

    def __iter__(self) -> Iterator[LocalApic]:
        return iter(self.apics)

    # -- destinations -------------------------------------------------------------------------------
    # -- snapshots (viridian.state): the IPI counters and every APIC's registers ---------------------------
    def save_state(self) -> dict[str, Any]:
        return {"ipis_sent": counter_items(self.ipis_sent), "apics": [a.save_state() for a in self.apics]}

    def load_state(self, state: dict[str, Any]) -> None:
        f = Fields(state, "apic_bus")
        sent = f.counter("ipis_sent", int_keys=True, max_len=len(self.apics))
        if any(vp >= len(self.apics) for vp in sent):
            raise StateError("apic_bus.ipis_sent: a VP index beyond the vCPU count")
        saved = f.seq("apics", len(self.apics))
        for apic, one in zip(self.apics, saved, strict=True):
            apic.load_state(one)
        self.ipis_sent = sent

    def resolve(self, source: LocalApic, icr: int) -> list[LocalApic]:
        """Targets of an ICR value sent by ``source`` (in VP order). The destination is bits 63:56
        when the source is in xAPIC mode and bits 63:32 in x2APIC mode (§11.6.1, §11.12.9)."""
        shorthand = (icr >> 18) & 3
        if shorthand == Shorthand.SELF:
            return [source] if source.hw_enabled else []
        present = [a for a in self.apics if a.hw_enabled]
        if shorthand == Shorthand.ALL_INCLUDING_SELF:
            return present
        if shorthand == Shorthand.ALL_EXCLUDING_SELF:
            return [a for a in present if a is not source]
        if source.x2apic:
            dest, broadcast = icr >> 32, X2APIC_BROADCAST
        else:
            dest, broadcast = (icr >> 56) & 0xFF, XAPIC_BROADCAST
        if dest == broadcast:
            return present  # §11.6.2.3 (physical) and §11.6.2.2 (logical, all ones)
        if icr & ICR_DEST_LOGICAL:
            return [a for a in present if a.matches_logical(dest)]
        return [a for a in present if a.apic_id == dest]  # §11.6.2.1

    # -- delivery -----------------------------------------------------------------------------------
    def send(self, source: LocalApic, icr: int) -> list[int]:
        """Deliver the IPI an ICR (or SELF IPI) write describes; returns the VP indices reached."""
        self.ipis_sent[source.vp_index] = self.ipis_sent.get(source.vp_index, 0) + 1
        mode = DeliveryMode((icr >> 8) & 7)
        if mode == DeliveryMode.INIT and icr & ICR_TRIGGER_LEVEL and not icr & ICR_LEVEL_ASSERT:
            return []  # INIT level de-assert: not supported since Pentium 4; ignored like KVM
        if mode in (DeliveryMode.SMI, DeliveryMode.RESERVED3, DeliveryMode.EXTINT):
            return []
        targets = self.resolve(source, icr)
        if mode == DeliveryMode.LOWEST_PRIORITY:
            targets = [a for a in targets if a.sw_enabled][:1]
        vector = icr & 0xFF
        return [t.vp_index for t in targets if self.deliver(t, mode, vector)]

    def deliver(self, target: LocalApic, mode: DeliveryMode, vector: int) -> bool:
        """One message to one APIC; True if it was accepted (a fixed IPI to a software-disabled APIC
        is dropped, §11.4.7.2)."""
        vp = target.vp_index
        if mode in (DeliveryMode.FIXED, DeliveryMode.LOWEST_PRIORITY):
            return target.assert_interrupt(vector)  # kicks through kick() when newly pending
        if mode == DeliveryMode.NMI:
            if self.on_nmi is not None:
                self.on_nmi(vp)
        elif mode == DeliveryMode.INIT:
            target.init()
            if self.on_init is not None:
                self.on_init(vp)
        elif mode == DeliveryMode.STARTUP:
            if self.on_sipi is not None:
                self.on_sipi(vp, vector)
        else:
            return False
        self.kick(target)
        return True

    def kick(self, target: LocalApic) -> None:
        """Tell the machine that ``target`` has something new pending."""
        if self.on_kick is not None:
            self.on_kick(target.vp_index)


__all__ = ["ApicBus"]
