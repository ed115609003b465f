"""The partition: partition-wide synthetic state and the entry points the machine calls (TLFS §2-§3)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from msr.apic import LocalApicPort
from msr.faults import ud
from viridian.abi.control import HypercallControl
from viridian.abi.dispatch import DispatchPolicy, HypercallOutcome
from viridian.abi.memory import GuestMemory
from viridian.abi.registers import HypercallRegisters
from viridian.clock import VirtualClock
from viridian.config.enlightenments import Enlightenments
from viridian.partition import hypercalls, msrs
from viridian.partition.cpuid import CpuidRegs, Offer, hv_leaves
from viridian.partition.hypercall_page import HypercallInsn, HypercallPage
from viridian.partition.reftime import PartitionTime
from viridian.partition.services import MachineServices, RecordingServices
from viridian.partition.vp import Overlay, VirtualProcessor
from viridian.state import Fields, StateError
from viridian.tlfs.cpuid import Feature, Leaf, PartitionPrivilege
from viridian.tlfs.hypercalls import HV_PAGE_SIZE
from viridian.tlfs.msrs import (
    PAGE_ENABLE,
    REENLIGHTENMENT_ENABLED,
    REENLIGHTENMENT_TARGET_VP_SHIFT,
    REENLIGHTENMENT_VECTOR_MASK,
    TSC_EMULATION_ENABLED,
    TSC_EMULATION_IN_PROGRESS,
    TSC_INVARIANT_EXPOSE,
)


class Partition:
    """A Hyper-V partition as the guest sees it. Engine-free: the machine drives it through
    :meth:`cpuid`, ``vp.rdmsr``/``vp.wrmsr``, :meth:`hypercall` and :meth:`poll`, and protects the pages
    listed by :meth:`overlays`."""

    def __init__(
        self,
        config: Enlightenments,
        memory: GuestMemory,
        *,
        vp_count: int = 1,
        services: MachineServices | None = None,
        clock: VirtualClock | None = None,
        apics: Sequence[LocalApicPort | None] | None = None,
        rep_budget: int = 256,
        hypercall_insn: HypercallInsn = HypercallInsn.VMCALL,
        hypercall_code: bytes | None = None,
    ) -> None:
        config.validate()
        self.config = config
        self.memory = memory
        self.services: MachineServices = services if services is not None else RecordingServices()
        self.clock = clock if clock is not None else VirtualClock()
        self.rep_budget = rep_budget
        self.msr_table = msrs.load_all()
        self.call_table = hypercalls.load_all()
        # partition-wide MSR state (TLFS App. C; KVM kvm_hv_msr_partition_wide)
        self.guest_os_id = 0
        self.hypercall_msr = 0
        self.hypercall_page = HypercallPage(memory, hypercall_insn, hypercall_code)  # the machine's code, if any
        self.time = PartitionTime(self.clock, memory)  # TIME_REF_COUNT, REFERENCE_TSC, re-enlightenment
        self.crash_params = [0] * 5  # CRASH_P0..P4
        self._refresh_offer()
        apic_list = list(apics) if apics is not None else [None] * vp_count
        self.vps = [VirtualProcessor(self, i, apic_list[i] if i < len(apic_list) else None) for i in range(vp_count)]
        for vp in self.vps:  # TLFS §11.x: an EOI of a SINT's vector rescans that SINT (KVM kvm_hv_synic_send_eoi)
            if vp.apic is not None and hasattr(vp.apic, "on_eoi"):
                vp.apic.on_eoi = vp.synic.on_eoi

    # -- CPUID ---------------------------------------------------------------------------------------
    def _refresh_offer(self) -> None:
        """Leaves may depend on the guest OS ID (Xen style): recompute when it changes."""
        self.leaves = hv_leaves(self.config, self.guest_os_id)
        self.offer = Offer.from_leaves(self.leaves)
        self.policy = DispatchPolicy(
            xmm_input=bool(self.offer.features & Feature.XMM_HYPERCALL_INPUT),
            xmm_output=bool(self.offer.features & Feature.XMM_HYPERCALL_OUTPUT),
            rep_budget=self.rep_budget,
        )

    def cpuid(self, leaf: int, subleaf: int = 0) -> CpuidRegs | None:
        """Hypervisor leaves 0x40000000-0x400000FF; None for any other leaf (the machine answers those)."""
        if not Leaf.VENDOR_AND_MAX <= leaf <= 0x400000FF:
            return None
        return self.leaves.get(leaf, CpuidRegs(0, 0, 0, 0))

    def invariant_tsc_suppressed(self) -> bool:
        """KVM (kvm_hv_invtsc_suppressed): when AccessTscInvariantControls is offered, the machine hides
        CPUID.80000007H:EDX[8] until the guest sets TSC_INVARIANT_CONTROL bit 0."""
        offered = bool(int(self.offer.privileges) & PartitionPrivilege.ACCESS_TSC_INVARIANT_CONTROLS)
        return offered and not self.time.tsc_invariant_control & TSC_INVARIANT_EXPOSE

    # -- hypercalls ------------------------------------------------------------------------------------
    def hypercalls_enabled(self) -> bool:
        """KVM kvm_hv_hypercall_enabled: Hv#1 offered and GUEST_OS_ID != 0 (the page need not be enabled)."""
        return self.offer.hv_present and self.guest_os_id != 0

    def hypercall(self, vp_index: int, regs: HypercallRegisters) -> HypercallOutcome:
        """Run the VMCALL/VMMCALL of ``vp_index``. Before the guest reports its OS ID the instruction is not
        a Hyper-V hypercall: KVM then treats it as a non-Hyper-V VMCALL; with nothing else behind it, #UD."""
        vp = self.vps[vp_index]
        if not self.hypercalls_enabled():
            code = HypercallControl.decode(regs.control).code
            spec = self.call_table.specs.get(code)
            return HypercallOutcome(
                code, spec.name if spec else f"unknown({code:#06x})",
                fault=ud("hypercall before GUEST_OS_ID was set"), advance_rip=False,
            )
        return self.call_table.dispatch(vp, regs, self.memory, self.policy)

    @property
    def hypercall_page_gpa(self) -> int | None:
        """GPA of the enabled hypercall page, else None."""
        return self.hypercall_page.gpa if self.hypercall_msr & PAGE_ENABLE else None

    # -- overlays --------------------------------------------------------------------------------------
    def overlays(self) -> list[Overlay]:
        """Hypervisor-owned pages now mapped in the guest: ``(gpa, kind, writable)``. The model has already
        written their contents into RAM (like KVM); the machine write-protects the read-only ones
        (TLFS §3.13: a guest write to the hypercall page #GPs)."""
        out: list[Overlay] = []
        if (gpa := self.hypercall_page_gpa) is not None:
            out.append(Overlay(gpa, "hypercall", False))
        if self.time.enabled and self.time.page_gpa is not None:
            # TLFS §12.7: hypervisor-maintained page the guest only reads (KVM leaves it plain RAM).
            out.append(Overlay(self.time.page_gpa, "reference_tsc", False))
        for vp in self.vps:
            out.extend(vp.overlays())
        return out

    @contextmanager
    def overlay_change(self) -> Iterator[None]:
        """Around a write that may move, enable, disable or rewrite overlay pages: the machine is told the
        overlays before and after (MachineServices.overlays_changed), also when the write faults."""
        before = self.overlays()
        try:
            yield
        finally:
            self.services.overlays_changed(before, self.overlays())

    # -- time --------------------------------------------------------------------------------------------
    def reference_time(self) -> int:
        """Partition reference time, 100 ns units since creation (TLFS §12.4), via the TSC-page formula."""
        return self.time.now()

    def poll(self, vp_index: int) -> int | None:
        """Deliver everything due on ``vp_index`` now; return its next deadline in reference time."""
        synic = self.vps[vp_index].synic
        if synic.quiet():  # nothing live: skip computing the reference time
            return None
        return synic.poll(self.reference_time())

    def change_tsc_frequency(self, tsc_hz: int) -> None:
        """The virtual TSC rate changes (e.g. restore on another host): re-publish the TSC page with a
        continuous reference time, and if re-enlightenment is enabled mark TSC emulation in progress and
        interrupt the target VP (TLFS App. C re-enlightenment; KVM leaves this to the VMM)."""
        self.time.change_tsc_frequency(tsc_hz)
        ctl = self.time.reenlightenment_control
        if not ctl & REENLIGHTENMENT_ENABLED:
            return
        if self.time.tsc_emulation_control & TSC_EMULATION_ENABLED:
            self.time.tsc_emulation_status |= TSC_EMULATION_IN_PROGRESS
        target = ctl >> REENLIGHTENMENT_TARGET_VP_SHIFT
        if target < len(self.vps):
            apic = self.vps[target].apic
            if apic is not None:
                apic.assert_interrupt(ctl & REENLIGHTENMENT_VECTOR_MASK)
            self.services.kick(target)

    # -- snapshots (viridian.state) ----------------------------------------------------------------------
    def save_state(self) -> dict[str, Any]:
        """Partition-wide MSR state, reference time and every VP (the offer itself comes from the options)."""
        return {"guest_os_id": self.guest_os_id, "hypercall_msr": self.hypercall_msr,
                "hypercall_page_gpa": self.hypercall_page.gpa, "crash_params": list(self.crash_params),
                "time": self.time.save_state(), "vps": [vp.save_state() for vp in self.vps]}

    def load_state(self, state: dict[str, Any]) -> None:
        """TLFS §3.13: the hypercall page is a whole page inside RAM; CPUID leaves are recomputed from the
        guest OS ID (Xen-style offers depend on it)."""
        f = Fields(state, "partition")
        gpa = f.opt_uint("hypercall_page_gpa", 0, self.memory.size - HV_PAGE_SIZE)
        if gpa is not None and gpa % HV_PAGE_SIZE:
            raise StateError(f"partition.hypercall_page_gpa: {gpa:#x} is not page-aligned")
        values = (f.uint("guest_os_id"), f.uint("hypercall_msr"), f.uints("crash_params", 5))
        vps = f.seq("vps", len(self.vps))
        self.time.load_state(f.sub("time"))
        for i, (vp, saved) in enumerate(zip(self.vps, vps, strict=True)):
            vp.load_state(Fields(saved, f"partition.vps[{i}]"))
        self.guest_os_id, self.hypercall_msr, self.crash_params = values
        self.hypercall_page.gpa = gpa
        self._refresh_offer()

    # -- reset -------------------------------------------------------------------------------------------
    def reset(self) -> None:
        """System reset: every partition-wide synthetic MSR back to its initial value, then each VP reset.
        Reference time keeps counting (it is time since partition creation, not since reset)."""
        self.guest_os_id = 0
        self.hypercall_msr = 0  # also the only way to clear Locked (TLFS §3.13)
        self.hypercall_page.disable()
        self.time.reset()
        self.crash_params = [0] * 5
        self._refresh_offer()
        for vp in self.vps:
            vp.reset()
