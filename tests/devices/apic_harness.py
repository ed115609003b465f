"""Helpers shared by the local APIC / APIC bus tests (importable: conftest puts this directory on sys.path)."""

from __future__ import annotations

from dataclasses import dataclass, field

from msr.apic import APIC_SVR
from viridian.clock import VirtualClock
from viridian.devices.apic_bus import ApicBus
from viridian.devices.lapic import LocalApic


@dataclass
class Recorder:
    """What the bus told the machine."""

    kicks: list[int] = field(default_factory=list)
    nmis: list[int] = field(default_factory=list)
    inits: list[int] = field(default_factory=list)
    sipis: list[tuple[int, int]] = field(default_factory=list)
    eoi_broadcasts: list[int] = field(default_factory=list)


def enable(apic: LocalApic, spurious: int = 0xFF) -> LocalApic:
    """Software-enable an APIC the way a guest does (SVR bit 8)."""
    apic.write_register(APIC_SVR, 0x100 | spurious)
    return apic


def make_bus(clock: VirtualClock, count: int = 8, *, enabled: bool = True) -> tuple[ApicBus, Recorder]:
    """``count`` APICs on one bus whose callbacks land in a :class:`Recorder`."""
    rec = Recorder()
    bus = ApicBus.create(
        count,
        clock,
        on_kick=rec.kicks.append,
        on_nmi=rec.nmis.append,
        on_init=rec.inits.append,
        on_sipi=lambda vp, vec: rec.sipis.append((vp, vec)),
        on_eoi_broadcast=rec.eoi_broadcasts.append,
    )
    if enabled:
        for a in bus:
            enable(a)
    return bus, rec
