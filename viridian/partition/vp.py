"""A virtual processor of the partition: per-VP synthetic state (TLFS §7 "Virtual processors")."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

from msr.apic import LocalApicPort
from msr.faults import Fault
from msr.registry import NOT_MINE, _NotMine
from viridian.abi.dispatch import HypercallOutcome
from viridian.abi.registers import HypercallRegisters
from viridian.partition.apic_assist import ApicAssist
from viridian.partition.synic import SynIC
from viridian.state import Fields

if TYPE_CHECKING:
    from viridian.partition.partition import Partition


class Overlay(NamedTuple):
    """A hypervisor-owned page mapped into the guest (TLFS §5.x "overlay pages"): its GPA, what it is
    ("hypercall", "reference_tsc", ...), and whether the guest may write it."""

    gpa: int
    kind: str
    writable: bool


class VirtualProcessor:
    """Per-VP state. Partition-wide state lives on :class:`Partition` (reached as ``vp.partition``)."""

    def __init__(self, partition: Partition, index: int, apic: LocalApicPort | None = None) -> None:
        self.partition = partition
        self.index = index  # HV_X64_MSR_VP_INDEX (TLFS §7.8.1): 0..n-1, unique
        self.apic = apic
        self.runtime_100ns = 0  # HV_X64_MSR_VP_RUNTIME; the machine accounts guest run time here
        self.vp_assist_msr = 0  # HV_X64_MSR_VP_ASSIST_PAGE raw value
        self.synic = SynIC(self)  # SIMP/SIEFP/SINTs, message queues, synthetic timers
        self.assist = ApicAssist(self)  # EOI avoidance through the VP assist page

    def __repr__(self) -> str:
        return f"<VP {self.index}>"

    # -- guest operations (the machine calls these on exits) ----------------------------------------
    def rdmsr(self, index: int) -> int | Fault | _NotMine:
        """A synthetic MSR read; NOT_MINE outside the Hyper-V range (the chain asks the next provider)."""
        return self.partition.msr_table.rdmsr(self, index)

    def wrmsr(self, index: int, value: int) -> Fault | _NotMine | None:
        return self.partition.msr_table.wrmsr(self, index, value)

    def hypercall(self, regs: HypercallRegisters) -> HypercallOutcome:
        return self.partition.hypercall(self.index, regs)

    def before_run(self) -> None:
        """Called right before the VP runs guest code (APIC assist: publish NoEoiRequired)."""
        self.assist.before_run()

    def after_run(self) -> None:
        """Called right after the VP stops running guest code (APIC assist: retire lazy EOIs)."""
        self.assist.after_run()

    def overlays(self) -> list[Overlay]:
        """Per-VP overlay pages: whatever a component (SynIC, APIC assist) lists through an optional
        ``overlays()`` method of its own (none does today: SIMP/SIEFP/assist pages are plain RAM)."""
        out: list[Overlay] = []
        for part in (self.synic, self.assist):
            listing: Callable[[], Iterable[Overlay]] | None = getattr(part, "overlays", None)
            if listing is not None:
                out.extend(listing())
        return out

    # -- snapshots (viridian.state) ----------------------------------------------------------------------
    def save_state(self) -> dict[str, Any]:
        return {"runtime_100ns": self.runtime_100ns, "vp_assist_msr": self.vp_assist_msr,
                "synic": self.synic.save_state(), "assist": self.assist.save_state()}

    def load_state(self, f: Fields) -> None:
        self.synic.load_state(f.sub("synic"))
        self.assist.load_state(f.sub("assist"))
        self.runtime_100ns, self.vp_assist_msr = f.uint("runtime_100ns"), f.uint("vp_assist_msr")

    def reset(self) -> None:
        """VP reset state (TLFS: SynIC pages and SINTs back to their initial values)."""
        self.runtime_100ns = 0
        self.vp_assist_msr = 0
        self.synic.reset()
        self.assist.reset()


__all__ = ["NOT_MINE", "Overlay", "VirtualProcessor"]
