"""The partition: partition-wide synthetic state and the entry points the machine calls (TLFS §2-§3)."""

from __future__ import annotations

from collections.abc import Sequence

from msr.apic import LocalApicPort
from viridian.abi.dispatch import DispatchPolicy, HypercallOutcome
from viridian.abi.memory import GuestMemory
from viridian.abi.registers import HypercallRegisters
from viridian.clock import VirtualClock
from viridian.config.enlightenments import Enlightenments
from viridian.partition import hypercalls, msrs
from viridian.partition.cpuid import CpuidRegs, Offer, hv_leaves
from viridian.partition.services import MachineServices, RecordingServices
from viridian.partition.vp import VirtualProcessor
from viridian.tlfs.cpuid import Feature, Leaf


class Partition:
    """A Hyper-V partition as the guest sees it. Engine-free: the machine drives it through
    :meth:`cpuid`, ``vp.rdmsr``/``vp.wrmsr``, :meth:`hypercall` and :meth:`poll`."""

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
        self._refresh_offer()
        apic_list = list(apics) if apics is not None else [None] * vp_count
        self.vps = [VirtualProcessor(self, i, apic_list[i] if i < len(apic_list) else None) for i in range(vp_count)]

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

    # -- hypercalls ------------------------------------------------------------------------------------
    def hypercall(self, vp_index: int, regs: HypercallRegisters) -> HypercallOutcome:
        vp = self.vps[vp_index]
        return self.call_table.dispatch(vp, regs, self.memory, self.policy)

    # -- time --------------------------------------------------------------------------------------------
    def reference_time(self) -> int:
        """Partition reference time, 100 ns units since creation (TLFS §12.4)."""
        return self.clock.ref_time()

    def poll(self, vp_index: int) -> int | None:
        """Deliver everything due on ``vp_index`` now; return its next deadline in reference time."""
        return self.vps[vp_index].synic.poll(self.reference_time())
