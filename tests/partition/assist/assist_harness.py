"""Harness for the APIC-MSR and APIC-assist tests: a partition wired to real local APIC models on one bus,
a guest-side EOI that follows the TLFS assist protocol, and the machine's injection path."""

from __future__ import annotations

from dataclasses import dataclass

from msr.apic import APIC_SVR
from viridian.abi.memory import BytesMemory
from viridian.clock import VirtualClock
from viridian.config.qemu import parse_qemu
from viridian.devices.apic_bus import ApicBus
from viridian.devices.lapic import LocalApic
from viridian.partition.partition import Partition
from viridian.partition.services import RecordingServices
from viridian.partition.vp import VirtualProcessor
from viridian.tlfs.msrs import HvMsr

FLAGS = "hv-relaxed,hv-vapic,hv-vpindex,hv-synic,hv-time"
PAGE_GPA = 0x3000
PAGE = PAGE_GPA | 1  # VP_ASSIST_PAGE value: enabled at PAGE_GPA
MEM = 64 << 10


@dataclass
class World:
    partition: Partition
    memory: BytesMemory
    bus: ApicBus

    def vp(self, index: int = 0) -> VirtualProcessor:
        return self.partition.vps[index]

    def apic(self, index: int = 0) -> LocalApic:
        return self.bus[index]


def make(flags: str = FLAGS, *, vp_count: int = 2, apics: bool = True) -> World:
    """Real APICs (software-enabled), assist page not yet enabled."""
    clock, memory = VirtualClock(), BytesMemory(MEM)
    bus = ApicBus.create(vp_count, clock)
    for apic in bus:
        apic.write_register(APIC_SVR, 0x1FF)
    part = Partition(parse_qemu(flags), memory, vp_count=vp_count, services=RecordingServices(), clock=clock,
                     apics=list(bus) if apics else None)
    return World(part, memory, bus)


def enable_page(w: World, vp: int = 0) -> None:
    assert w.vp(vp).wrmsr(HvMsr.VP_ASSIST_PAGE, PAGE + vp * 0x1000) is None


def word(w: World, vp: int = 0) -> int:
    """The ApicAssist u32 of ``vp``'s page."""
    return w.memory.read_u32(PAGE_GPA + vp * 0x1000)


def inject(w: World, vp: int = 0) -> int | None:
    """The machine's injection path: retire a skipped EOI, decide, acknowledge, tell the assist."""
    v = w.vp(vp)
    v.assist.retire_lazy_eoi()
    vector = w.apic(vp).pending_vector()
    if vector is None:
        return None
    assert w.apic(vp).acknowledge() == vector
    v.assist.on_inject(vector)
    return vector


def guest_eoi(w: World, vp: int = 0) -> str:
    """The guest's EOI (TLFS "EOI Assist"): btr NoEoiRequired; skip if it was set, else WRMSR EOI."""
    gpa = PAGE_GPA + vp * 0x1000
    value = w.memory.read_u32(gpa) if w.vp(vp).vp_assist_msr & 1 else 0
    if value & 1:
        w.memory.write_u32(gpa, value & ~1)
        return "skipped"
    assert w.vp(vp).wrmsr(HvMsr.EOI, 0) is None
    return "msr"


def run(w: World, vp: int = 0, *, eoi: bool = False) -> str | None:
    """One stretch of guest execution: before_run, (optionally) one guest EOI, after_run."""
    v = w.vp(vp)
    v.before_run()
    done = guest_eoi(w, vp) if eoi else None
    v.after_run()
    return done
