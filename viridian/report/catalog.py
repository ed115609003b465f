"""Every enlightenment the negotiation report knows: how it is offered (privilege / feature / recommendation
bits of CPUID 0x40000003-4) and how a guest uses it (MSRs, hypercalls), with its TLFS section."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from viridian.partition.cpuid import Offer
from viridian.tlfs.cpuid import SPINLOCK_NEVER_NOTIFY, Feature
from viridian.tlfs.cpuid import PartitionPrivilege as P
from viridian.tlfs.cpuid import Recommendation as R
from viridian.tlfs.hypercalls import HvCall
from viridian.tlfs.msr_names import msr_name as msr_name  # re-exported: reports name MSRs through the catalog
from viridian.tlfs.msrs import HvMsr

SYNIC_MSRS = frozenset({HvMsr.SCONTROL, HvMsr.SVERSION, HvMsr.SIEFP, HvMsr.SIMP, HvMsr.EOM, HvMsr.SIRBP,
                        *range(HvMsr.SINT0, HvMsr.SINT15 + 1)})
STIMER_MSRS = frozenset(range(HvMsr.STIMER0_CONFIG, HvMsr.STIMER3_COUNT + 1))
CRASH_MSRS = frozenset(range(HvMsr.CRASH_P0, HvMsr.CRASH_CTL + 1))


@dataclass(frozen=True)
class Enlightenment:
    """One row of the report. ``privilege``/``feature``: CPUID bits that must all be set for it to be offered;
    ``recommendation``: the 0x40000004 bit that asks for it (0: none exists); ``special``: a use the MSR and
    hypercall lists cannot see (decided by the report)."""

    key: str
    title: str
    spec: str
    privilege: int = 0
    feature: int = 0
    recommendation: int = 0
    msrs: frozenset[int] = frozenset()
    hypercalls: frozenset[int] = frozenset()
    special: str = ""
    extra_offer: Callable[[Offer], bool] | None = None

    def offered(self, offer: Offer) -> bool:
        if not offer.hv_present:
            return False
        ok = (offer.privilege_mask & self.privilege) == self.privilege \
            and (offer.feature_mask & self.feature) == self.feature
        return ok and (self.extra_offer is None or self.extra_offer(offer))

    def recommended(self, offer: Offer) -> bool | None:
        """None when the TLFS has no recommendation bit for it."""
        if self.key == "spin_notify":
            return offer.hv_present and offer.spin_retries not in (0, SPINLOCK_NEVER_NOTIFY)
        if not self.recommendation:
            return None
        return offer.hv_present and (offer.recommendation_mask & self.recommendation) == self.recommendation


def _ms(*names: int) -> frozenset[int]:
    return frozenset(int(n) for n in names)


CATALOG: tuple[Enlightenment, ...] = (
    Enlightenment("hypercall_page", "GUEST_OS_ID + hypercall page", "TLFS hypercall-interface.md",
                  privilege=P.ACCESS_HYPERCALL_MSRS, msrs=_ms(HvMsr.GUEST_OS_ID, HvMsr.HYPERCALL)),
    Enlightenment("vp_index", "VP_INDEX MSR", "TLFS vp-properties.md (VP index)", privilege=P.ACCESS_VP_INDEX, msrs=_ms(HvMsr.VP_INDEX)),
    Enlightenment("vp_runtime", "VP_RUNTIME MSR", "TLFS vp-properties.md (VP runtime)", privilege=P.ACCESS_VP_RUNTIME_REG,
                  msrs=_ms(HvMsr.VP_RUNTIME)),
    Enlightenment("apic_msrs", "APIC EOI/ICR/TPR MSRs", "TLFS virtual-interrupts.md (UseApicMsrs)",
                  privilege=P.ACCESS_INTR_CTRL_REGS, recommendation=R.APIC_MSRS,
                  msrs=_ms(HvMsr.EOI, HvMsr.ICR, HvMsr.TPR)),
    Enlightenment("vp_assist", "VP assist page", "TLFS datatypes/hv_vp_assist_page.md", privilege=P.ACCESS_INTR_CTRL_REGS,
                  msrs=_ms(HvMsr.VP_ASSIST_PAGE)),
    Enlightenment("eoi_avoidance", "APIC assist: EOIs avoided", "TLFS virtual-interrupts.md (EOI assist)",
                  privilege=P.ACCESS_INTR_CTRL_REGS, special="eoi_avoided"),
    Enlightenment("relaxed_timing", "relaxed timing (no watchdogs)", "TLFS feature-discovery.md (UseRelaxedTiming)",
                  recommendation=R.RELAXED_TIMING, special="advisory"),
    Enlightenment("spin_notify", "HvNotifyLongSpinWait", "TLFS hypercalls/HvCallNotifyLongSpinWait.md",
                  privilege=P.ACCESS_HYPERCALL_MSRS, hypercalls=_ms(HvCall.NOTIFY_LONG_SPIN_WAIT)),
    Enlightenment("reference_counter", "partition reference counter", "TLFS timers.md (reference counter)",
                  privilege=P.ACCESS_PARTITION_REFERENCE_COUNTER, msrs=_ms(HvMsr.TIME_REF_COUNT)),
    Enlightenment("reference_tsc", "reference TSC page", "TLFS timers.md (reference TSC page)",
                  privilege=P.ACCESS_PARTITION_REFERENCE_TSC, msrs=_ms(HvMsr.REFERENCE_TSC)),
    Enlightenment("frequencies", "TSC/APIC frequency MSRs", "TLFS feature-discovery.md (AccessFrequencyRegs)",
                  privilege=P.ACCESS_FREQUENCY_REGS, msrs=_ms(HvMsr.TSC_FREQUENCY, HvMsr.APIC_FREQUENCY)),
    Enlightenment("guest_idle", "GUEST_IDLE MSR", "TLFS vp-properties.md (guest idle)",
                  privilege=P.ACCESS_GUEST_IDLE_REG, feature=Feature.GUEST_IDLE_STATE, msrs=_ms(HvMsr.GUEST_IDLE)),
    Enlightenment("synic", "synthetic interrupt controller", "TLFS inter-partition-communication.md", privilege=P.ACCESS_SYNIC_REGS,
                  msrs=SYNIC_MSRS, hypercalls=_ms(HvCall.POST_MESSAGE, HvCall.SIGNAL_EVENT)),
    Enlightenment("stimers", "synthetic timers", "TLFS timers.md (synthetic timers)", privilege=P.ACCESS_SYNTHETIC_TIMER_REGS,
                  msrs=STIMER_MSRS),
    Enlightenment("stimer_direct", "direct-mode synthetic timers", "TLFS timers.md (direct mode)",
                  privilege=P.ACCESS_SYNTHETIC_TIMER_REGS, feature=Feature.DIRECT_SYNTHETIC_TIMERS,
                  special="stimer_direct"),
    Enlightenment("cluster_ipi", "HvCallSendSyntheticClusterIpi", "TLFS hypercalls/HvCallSendSyntheticClusterIpi.md",
                  privilege=P.ACCESS_HYPERCALL_MSRS, recommendation=R.SYNTHETIC_CLUSTER_IPI,
                  hypercalls=_ms(HvCall.SEND_SYNTHETIC_CLUSTER_IPI)),
    Enlightenment("cluster_ipi_ex", "HvCallSendSyntheticClusterIpiEx", "TLFS hypercalls/HvCallSendSyntheticClusterIpiEx.md",
                  privilege=P.ACCESS_HYPERCALL_MSRS, recommendation=R.SYNTHETIC_CLUSTER_IPI | R.EX_PROCESSOR_MASKS,
                  hypercalls=_ms(HvCall.SEND_SYNTHETIC_CLUSTER_IPI_EX)),
    Enlightenment("remote_flush", "HvCallFlushVirtualAddressSpace/List", "TLFS tlb.md (UseHypercallForRemoteFlush)",
                  privilege=P.ACCESS_HYPERCALL_MSRS, recommendation=R.REMOTE_FLUSH_HYPERCALL,
                  hypercalls=_ms(HvCall.FLUSH_VIRTUAL_ADDRESS_SPACE, HvCall.FLUSH_VIRTUAL_ADDRESS_LIST)),
    Enlightenment("remote_flush_ex", "HvCallFlushVirtualAddressSpace/ListEx", "TLFS tlb.md (Ex forms)",
                  privilege=P.ACCESS_HYPERCALL_MSRS,
                  recommendation=R.REMOTE_FLUSH_HYPERCALL | R.EX_PROCESSOR_MASKS,
                  hypercalls=_ms(HvCall.FLUSH_VIRTUAL_ADDRESS_SPACE_EX, HvCall.FLUSH_VIRTUAL_ADDRESS_LIST_EX)),
    Enlightenment("crash", "guest crash MSRs", "TLFS feature-discovery.md (GuestCrashRegsAvailable)",
                  feature=Feature.GUEST_CRASH_REGS, msrs=CRASH_MSRS),
    Enlightenment("reset", "RESET MSR", "TLFS feature-discovery.md (AccessResetReg)",
                  privilege=P.ACCESS_RESET_REG, recommendation=R.MSR_FOR_RESET, msrs=_ms(HvMsr.RESET)),
    Enlightenment("reenlightenment", "reenlightenment MSRs", "TLFS feature-discovery.md (reenlightenment)",
                  privilege=P.ACCESS_REENLIGHTENMENT_CONTROLS,
                  msrs=_ms(HvMsr.REENLIGHTENMENT_CONTROL, HvMsr.TSC_EMULATION_CONTROL, HvMsr.TSC_EMULATION_STATUS)),
    Enlightenment("tsc_invariant", "TSC invariant control", "Linux hyperv-tlfs.h (AccessTscInvariantControls)",
                  privilege=P.ACCESS_TSC_INVARIANT_CONTROLS, msrs=_ms(HvMsr.TSC_INVARIANT_CONTROL)),
)

BY_KEY = {e.key: e for e in CATALOG}

LEAF_NAMES = {0x0: "vendor", 0x1: "features (ECX[31] hypervisor)", 0x40000000: "vendor + max leaf",
              0x40000001: "interface (Hv#1)", 0x40000002: "version", 0x40000003: "features/privileges",
              0x40000004: "recommendations", 0x40000005: "limits", 0x40000006: "hardware features",
              0x40000007: "CPU management", 0x40000008: "SVM", 0x40000009: "nested features",
              0x4000000A: "nested optimizations"}
