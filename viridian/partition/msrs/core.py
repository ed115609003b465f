"""Core synthetic MSRs: GUEST_OS_ID, HYPERCALL, VP_INDEX, RESET, VP_RUNTIME (TLFS §3.6, §3.13, §7.8)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from msr.faults import GuestFault, gp
from viridian.partition.gates import feature, privilege
from viridian.partition.msrs import HV_MSRS
from viridian.tlfs.cpuid import Feature, PartitionPrivilege
from viridian.tlfs.msrs import HYPERCALL_LOCKED, PAGE_ENABLE, PAGE_GPFN_SHIFT, RESET_BIT, HvMsr

if TYPE_CHECKING:
    from viridian.partition.vp import VirtualProcessor

MASK64: Final = (1 << 64) - 1
HYPERCALL_GPFN_MASK: Final = MASK64 & ~((1 << PAGE_GPFN_SHIFT) - 1)  # 63:12

HYPERCALL_MSRS = privilege(PartitionPrivilege.ACCESS_HYPERCALL_MSRS)
VP_INDEX_GATE = privilege(PartitionPrivilege.ACCESS_VP_INDEX)
RESET_GATE = privilege(PartitionPrivilege.ACCESS_RESET_REG)
VP_RUNTIME_GATE = privilege(PartitionPrivilege.ACCESS_VP_RUNTIME_REG)
hypercall_lock_offered = feature(Feature.HYPERCALL_MSR_LOCK)


# -- GUEST_OS_ID ------------------------------------------------------------------------------------------
@HV_MSRS.reader(HvMsr.GUEST_OS_ID, name="GUEST_OS_ID", gate=HYPERCALL_MSRS, cite="TLFS §3.6")
def read_guest_os_id(vp: VirtualProcessor) -> int:
    # TLFS §3.6: partition-wide, initial value 0.
    return vp.partition.guest_os_id


@HV_MSRS.writer(HvMsr.GUEST_OS_ID, gate=HYPERCALL_MSRS, cite="TLFS §3.6; KVM kvm_hv_set_msr_pw")
def write_guest_os_id(vp: VirtualProcessor, value: int) -> None:
    # TLFS §3.6: any value accepted; writing 0 disables the hypercall page (KVM clears the Enable bit).
    part = vp.partition
    with part.overlay_change():
        old, part.guest_os_id = part.guest_os_id, value
        if value == 0:
            part.hypercall_msr &= ~PAGE_ENABLE
            part.hypercall_page.disable()
        if value != old:
            part._refresh_offer()  # Xen-style leaves (0x40000002/4) depend on the guest OS ID


# -- HYPERCALL --------------------------------------------------------------------------------------------
@HV_MSRS.reader(HvMsr.HYPERCALL, name="HYPERCALL", gate=HYPERCALL_MSRS, cite="TLFS §3.13")
def read_hypercall(vp: VirtualProcessor) -> int:
    # TLFS §3.13: 0 Enable, 1 Locked, 11:2 RsvdP, 63:12 GPFN.
    return vp.partition.hypercall_msr


@HV_MSRS.writer(HvMsr.HYPERCALL, gate=HYPERCALL_MSRS, cite="TLFS §3.13; KVM; OpenVMM hv.rs (Locked)")
def write_hypercall(vp: VirtualProcessor, value: int) -> None:
    # TLFS §3.13 is silent on writes after Locked; KVM lacks the bit; OpenVMM (Microsoft) answers #GP.
    with vp.partition.overlay_change():  # the machine write-protects the page where it now is
        _write_hypercall(vp, value)


def _write_hypercall(vp: VirtualProcessor, value: int) -> None:
    part = vp.partition
    lockable = hypercall_lock_offered(vp)
    if lockable and part.hypercall_msr & HYPERCALL_LOCKED:
        raise GuestFault(gp("HYPERCALL: MSR is locked until system reset"))
    if part.guest_os_id == 0:
        return  # KVM: written before GUEST_OS_ID the write is ignored, the page stays disabled
    # RsvdP 11:2 (and bit 1 when locking is not offered) keep the hypervisor's value: 0.
    keep = HYPERCALL_GPFN_MASK | PAGE_ENABLE | (HYPERCALL_LOCKED if lockable else 0)
    new = (value & keep) | (part.hypercall_msr & ~keep & MASK64)
    if new & PAGE_ENABLE:
        # TLFS §3.13: a GPFN outside the partition's GPA space #GPs.
        if not part.hypercall_page.enable(new >> PAGE_GPFN_SHIFT):
            raise GuestFault(gp(f"HYPERCALL: GPFN {new >> PAGE_GPFN_SHIFT:#x} is outside guest RAM"))
    else:
        part.hypercall_page.disable()
    part.hypercall_msr = new


# -- VP_INDEX ---------------------------------------------------------------------------------------------
@HV_MSRS.reader(HvMsr.VP_INDEX, name="VP_INDEX", gate=VP_INDEX_GATE, cite="TLFS §7.8.1; KVM: write #GP")
def read_vp_index(vp: VirtualProcessor) -> int:
    # TLFS §7.8.1: 0..n-1, unique; no writer: KVM answers a guest write with #GP.
    return vp.index


# -- RESET ------------------------------------------------------------------------------------------------
@HV_MSRS.reader(HvMsr.RESET, name="RESET", gate=RESET_GATE, cite="KVM: reads 0")
def read_reset(vp: VirtualProcessor) -> int:
    # KVM kvm_hv_get_msr_pw: HV_X64_MSR_RESET always reads 0.
    return 0


@HV_MSRS.writer(HvMsr.RESET, reserved=MASK64 & ~RESET_BIT, gate=RESET_GATE, cite="TLFS App. C (RESET)")
def write_reset(vp: VirtualProcessor, value: int) -> None:
    # TLFS: bit 0 = 1 requests a hypervisor-controlled reboot; 63:1 RsvdZ (#GP; KVM ignores them).
    if value & RESET_BIT:
        vp.partition.services.request_reset(vp.index)


# -- VP_RUNTIME -------------------------------------------------------------------------------------------
@HV_MSRS.reader(HvMsr.VP_RUNTIME, name="VP_RUNTIME", gate=VP_RUNTIME_GATE, cite="TLFS §7.8.2")
def read_vp_runtime(vp: VirtualProcessor) -> int:
    # TLFS §7.8.2: time the VP ran, 100 ns units; read-only (no writer -> #GP, as KVM).
    return vp.runtime_100ns
