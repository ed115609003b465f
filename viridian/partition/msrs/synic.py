"""SynIC MSRs 0x40000080-0x40000084 and SINT0-15 0x40000090-0x4000009F (TLFS §11.8, App. C).

All gated by PartitionPrivilege.ACCESS_SYNIC_REGS (0x40000003.EAX[2]); not offered -> #GP (KVM
enforce_cpuid). RsvdP bits are stored as written and read back (KVM keeps the raw value).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from msr.faults import GuestFault, gp
from viridian.partition import gates
from viridian.partition.msrs import HV_MSRS
from viridian.tlfs.cpuid import Feature, PartitionPrivilege
from viridian.tlfs.hypercalls import HV_SYNIC_SINT_COUNT
from viridian.tlfs.msrs import SINT_MASKED, SINT_MIN_VECTOR, SINT_POLLING, SINT_VECTOR_MASK, HvMsr, sint_msr

if TYPE_CHECKING:
    from viridian.partition.vp import VirtualProcessor

SYNIC = gates.privilege(PartitionPrivilege.ACCESS_SYNIC_REGS)
_POLLING_OFFERED = gates.feature(Feature.SINT_POLLING_MODE)


@HV_MSRS.reader(HvMsr.SCONTROL, name="SCONTROL", gate=SYNIC, cite="TLFS §11.8 SCONTROL")
def read_scontrol(vp: VirtualProcessor) -> int:
    # TLFS §11.8: bit 0 Enable, 63:1 RsvdP; initial value 0 (TLFS; KVM synic_init also 0).
    return vp.synic.control


@HV_MSRS.writer(HvMsr.SCONTROL, name="SCONTROL", gate=SYNIC, cite="TLFS §11.8 SCONTROL")
def write_scontrol(vp: VirtualProcessor, value: int) -> None:
    # TLFS §11.8: enabling the SynIC makes queued messages deliverable (rescan).
    vp.synic.write_scontrol(value)


@HV_MSRS.reader(HvMsr.SVERSION, name="SVERSION", gate=SYNIC, cite="TLFS §11.8 SVERSION; KVM: write #GP")
def read_sversion(vp: VirtualProcessor) -> int:
    # TLFS §11.8: read-only version 1 (no writer declared: WRMSR -> #GP, as KVM for guests).
    return vp.synic.version


@HV_MSRS.reader(HvMsr.SIEFP, name="SIEFP", gate=SYNIC, cite="TLFS §11.8 SIEFP")
def read_siefp(vp: VirtualProcessor) -> int:
    # TLFS §11.8: bit 0 Enable, 11:1 RsvdP, 63:12 GPFN.
    return vp.synic.siefp


@HV_MSRS.writer(HvMsr.SIEFP, name="SIEFP", gate=SYNIC, cite="TLFS §11.8 SIEFP")
def write_siefp(vp: VirtualProcessor, value: int) -> None:
    # TLFS §11.8: a GPA outside RAM leaves the page inaccessible (no #GP; KVM would #GP).
    vp.synic.write_siefp(value)


@HV_MSRS.reader(HvMsr.SIMP, name="SIMP", gate=SYNIC, cite="TLFS §11.8 SIMP")
def read_simp(vp: VirtualProcessor) -> int:
    # TLFS §11.8: bit 0 Enable, 11:1 RsvdP, 63:12 GPFN.
    return vp.synic.simp


@HV_MSRS.writer(HvMsr.SIMP, name="SIMP", gate=SYNIC, cite="TLFS §11.8 SIMP; KVM zeroes the page")
def write_simp(vp: VirtualProcessor, value: int) -> None:
    # TLFS §11.8: page zeroed when it appears (KVM); outside RAM -> inaccessible, delivery waits.
    vp.synic.write_simp(value)


@HV_MSRS.reader(HvMsr.EOM, name="EOM", gate=SYNIC, cite="TLFS §11.8 EOM")
def read_eom(vp: VirtualProcessor) -> int:
    # TLFS §11.8: EOM reads return 0.
    return 0


@HV_MSRS.writer(HvMsr.EOM, name="EOM", gate=SYNIC, cite="TLFS §11.8 EOM")
def write_eom(vp: VirtualProcessor, value: int) -> None:
    # TLFS §11.8: any write signals end of message: rescan every message queue.
    vp.synic.eom()


def _declare_sint(n: int) -> None:
    @HV_MSRS.reader(sint_msr(n), name=f"SINT{n}", gate=SYNIC, cite="TLFS §11.8 SINTx")
    def read_sint(vp: VirtualProcessor) -> int:
        # TLFS §11.8: 7:0 Vector, 16 Masked, 17 AutoEOI, 18 Polling; reset value 0x10000.
        return vp.synic.sints[n]

    @HV_MSRS.writer(sint_msr(n), name=f"SINT{n}", gate=SYNIC, cite="TLFS §11.8 SINTx; KVM synic_set_sint")
    def write_sint(vp: VirtualProcessor, value: int) -> None:
        # KVM synic_set_sint: vector < 16 #GPs only when unmasked, so writing back the reset value
        # 0x10000 works (TLFS §11.8 says 16-255 without that nuance).
        if value & SINT_VECTOR_MASK < SINT_MIN_VECTOR and not value & SINT_MASKED:
            raise GuestFault(gp(f"SINT{n}: vector {value & SINT_VECTOR_MASK} < 16"))
        # TLFS §11.8: Polling (bit 18) exists only with 0x40000003.EDX[17]; otherwise reserved -> #GP.
        if value & SINT_POLLING and not _POLLING_OFFERED(vp):
            raise GuestFault(gp(f"SINT{n}: polling mode not offered"))
        vp.synic.write_sint(n, value)


for _n in range(HV_SYNIC_SINT_COUNT):
    _declare_sint(_n)
