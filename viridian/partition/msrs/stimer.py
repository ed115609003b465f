"""Synthetic timer MSRs STIMER0-3_CONFIG/COUNT 0x400000B0-0x400000B7 (TLFS §12.x, App. C).

Gated by PartitionPrivilege.ACCESS_SYNTHETIC_TIMER_REGS (0x40000003.EAX[3]); not offered -> #GP
(KVM enforce_cpuid). After a write that arms a timer already due, the timer fires before the WRMSR
completes (KVM processes the pending-timer request before re-entering the guest).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from msr.faults import GuestFault, gp
from viridian.partition import gates
from viridian.partition.msrs import HV_MSRS
from viridian.tlfs.cpuid import Feature, PartitionPrivilege
from viridian.tlfs.hypercalls import HV_SYNIC_STIMER_COUNT
from viridian.tlfs.msrs import STIMER_CONFIG_RESERVED, STIMER_DIRECT_MODE, stimer_config_msr, stimer_count_msr

if TYPE_CHECKING:
    from viridian.partition.vp import VirtualProcessor

STIMER = gates.privilege(PartitionPrivilege.ACCESS_SYNTHETIC_TIMER_REGS)
_DIRECT_OFFERED = gates.feature(Feature.DIRECT_SYNTHETIC_TIMERS)


def _settle(vp: VirtualProcessor, now: int) -> None:
    """Fire anything the write made due at once (one-shot deadline already in the past)."""
    vp.synic.poll(now)


def _declare_timer(n: int) -> None:
    @HV_MSRS.reader(stimer_config_msr(n), name=f"STIMER{n}_CONFIG", gate=STIMER,
                    cite="TLFS timers.md STIMERx_CONFIG")
    def read_config(vp: VirtualProcessor) -> int:
        # TLFS §12.x: 0 Enable, 1 Periodic, 2 Lazy, 3 AutoEnable, 11:4 ApicVector, 12 Direct, 19:16 SINTx.
        return vp.synic.timers[n].config

    @HV_MSRS.writer(stimer_config_msr(n), name=f"STIMER{n}_CONFIG", gate=STIMER, reserved=STIMER_CONFIG_RESERVED,
                    cite="TLFS timers.md STIMERx_CONFIG; KVM stimer_set_config")
    def write_config(vp: VirtualProcessor, value: int) -> None:
        # KVM stimer_set_config: DirectMode without 0x40000003.EDX[19] -> #GP; RsvdZ 15:13, 63:20 -> #GP.
        if value & STIMER_DIRECT_MODE and not _DIRECT_OFFERED(vp):
            raise GuestFault(gp(f"STIMER{n}_CONFIG: direct mode not offered"))
        now = vp.synic.now()
        vp.synic.timers[n].write_config(value, now)
        _settle(vp, now)

    @HV_MSRS.reader(stimer_count_msr(n), name=f"STIMER{n}_COUNT", gate=STIMER, cite="TLFS timers.md STIMERx_COUNT")
    def read_count(vp: VirtualProcessor) -> int:
        # TLFS §12.x: COUNT reads back the programmed value (100 ns units).
        return vp.synic.timers[n].count

    @HV_MSRS.writer(stimer_count_msr(n), name=f"STIMER{n}_COUNT", gate=STIMER,
                    cite="TLFS timers.md STIMERx_COUNT; KVM stimer_set_count")
    def write_count(vp: VirtualProcessor, value: int) -> None:
        # TLFS §12.x: 0 disables, AutoEnable + non-zero enables; one-shot absolute, periodic a period.
        now = vp.synic.now()
        vp.synic.timers[n].write_count(value, now)
        _settle(vp, now)


for _n in range(HV_SYNIC_STIMER_COUNT):
    _declare_timer(_n)
