"""GUEST_IDLE, and the TLFS MSRs no viridian configuration offers, declared so they #GP with a reason.

The undeclared rest of the Hyper-V range already #GPs (MsrTable ``claims``); these are listed explicitly
so the refusal says *why* (not offered / root-only) instead of "unimplemented".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from msr.faults import GuestFault, gp
from viridian.partition.gates import Gate, feature, privilege
from viridian.partition.msrs import HV_MSRS
from viridian.tlfs.cpuid import Feature, PartitionPrivilege
from viridian.tlfs.msrs import HvMsr

if TYPE_CHECKING:
    from viridian.partition.vp import VirtualProcessor

GUEST_IDLE_GATE = privilege(PartitionPrivilege.ACCESS_GUEST_IDLE_REG)


@HV_MSRS.reader(HvMsr.GUEST_IDLE, name="GUEST_IDLE", gate=GUEST_IDLE_GATE, cite="TLFS §7 idle (our extension)")
def read_guest_idle(vp: VirtualProcessor) -> int:
    # TLFS §7: the read idles the VP until any interrupt, even with IF=0; value unspecified -> 0.
    # KVM does not implement this MSR (#GP); we do, behind AccessGuestIdleReg. No writer -> #GP.
    vp.partition.services.enter_idle(vp.index)
    return 0


def _never(vp: VirtualProcessor) -> bool:
    """Root-partition-only MSRs: no guest privilege exists for them."""
    return False


def _refuse(index: int, name: str, gate: Gate, why: str) -> None:
    """Declare ``index``: #GP "not offered" while ``gate`` fails, #GP ``why`` should a config offer it."""

    def fault() -> GuestFault:
        return GuestFault(gp(f"{name}: {why}"))

    def reader(vp: VirtualProcessor) -> int:
        raise fault()

    def writer(vp: VirtualProcessor, value: int) -> None:
        raise fault()

    HV_MSRS.reader(index, name=name, gate=gate, cite=why)(reader)
    HV_MSRS.writer(index, name=name, gate=gate, cite=why)(writer)


_NOT_MODELLED: list[tuple[tuple[HvMsr, ...], Gate, str]] = [
    # TLFS App. C NPIEP (EDX12): instruction-execution prevention is a host policy we do not model.
    ((HvMsr.NPIEP_CONFIG,), feature(Feature.NPIEP), "NPIEP not modelled (TLFS App. C, EDX12)"),
    # TLFS §8 stats pages (EAX8, mapped by the root); KVM #GPs them too.
    ((HvMsr.STATS_PARTITION_RETAIL_PAGE, HvMsr.STATS_PARTITION_INTERNAL_PAGE, HvMsr.STATS_VP_RETAIL_PAGE,
      HvMsr.STATS_VP_INTERNAL_PAGE), privilege(PartitionPrivilege.ACCESS_STATS_REG),
     "statistics pages not modelled (TLFS App. C, EAX8; KVM #GP)"),
    # TLFS App. C power-state MSRs: root partition only (Win7-era WDK ff541620).
    ((HvMsr.POWER_STATE_TRIGGER_C1, HvMsr.POWER_STATE_TRIGGER_C2, HvMsr.POWER_STATE_TRIGGER_C3,
      HvMsr.POWER_STATE_CONFIG_C1, HvMsr.POWER_STATE_CONFIG_C2, HvMsr.POWER_STATE_CONFIG_C3), _never,
     "root-partition power-state MSR (TLFS App. C)"),
    # Synthetic debugger (EDX11 + KVM 0x40000082): a host debugger transport, not modelled.
    ((HvMsr.SYNDBG_CONTROL, HvMsr.SYNDBG_STATUS, HvMsr.SYNDBG_SEND_BUFFER, HvMsr.SYNDBG_RECV_BUFFER,
      HvMsr.SYNDBG_PENDING_BUFFER, HvMsr.SYNDBG_OPTIONS), feature(Feature.DEBUG_REGS),
     "synthetic debugger not modelled (KVM hv-syndbg, EDX11)"),
    # SynIC SIRBP (Linux hvgdk_mini.h): VSM-only, behind AccessVsm, which no configuration offers.
    ((HvMsr.SIRBP,), privilege(PartitionPrivilege.ACCESS_VSM), "SIRBP: VSM not modelled (Linux hvgdk, EBX16)"),
    # TLFS App. C synthetic time-unhalted timer (EDX23): needs a PMU-style unhalted clock we lack.
    ((HvMsr.STIME_UNHALTED_TIMER_CONFIG, HvMsr.STIME_UNHALTED_TIMER_COUNT),
     feature(Feature.SYNTHETIC_TIME_UNHALTED_TIMER), "time-unhalted timer not modelled (TLFS App. C, EDX23)"),
]

for _indices, _gate, _why in _NOT_MODELLED:
    for _index in _indices:
        _refuse(_index, _index.name, _gate, _why)
