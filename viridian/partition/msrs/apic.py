"""APIC access MSRs EOI/ICR/TPR and HV_X64_MSR_VP_ASSIST_PAGE (TLFS §10.5 "Local APIC MSR access", §7.8.7).

All four are gated by AccessIntrCtrlRegs (0x40000003.EAX[4]; KVM gates VP_ASSIST_PAGE the same way).
EOI/ICR/TPR route to the VP's local APIC; a VP without one answers #GP (KVM: no in-kernel LAPIC -> #GP).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from msr.apic import LocalApicPort
from msr.faults import GuestFault, gp
from viridian.partition.gates import privilege
from viridian.partition.msrs import HV_MSRS
from viridian.tlfs.cpuid import PartitionPrivilege
from viridian.tlfs.hypercalls import HV_PAGE_SIZE
from viridian.tlfs.msrs import PAGE_ENABLE, PAGE_GPFN_SHIFT, HvMsr

if TYPE_CHECKING:
    from viridian.partition.vp import VirtualProcessor

MASK64: Final = (1 << 64) - 1
HIGH_DWORD: Final = MASK64 & ~0xFFFFFFFF  # bits 63:32
TPR_MASK: Final = 0xFF
VP_ASSIST_KEEP: Final = (MASK64 & ~((1 << PAGE_GPFN_SHIFT) - 1)) | PAGE_ENABLE  # 63:12 PFN, 0 Enable

INTR_CTRL = privilege(PartitionPrivilege.ACCESS_INTR_CTRL_REGS)


def _apic(vp: VirtualProcessor) -> LocalApicPort:
    if vp.apic is None:
        raise GuestFault(gp(f"VP {vp.index}: no local APIC behind the Hyper-V APIC MSRs"))
    return vp.apic


# -- EOI --------------------------------------------------------------------------------------------------
@HV_MSRS.writer(HvMsr.EOI, name="EOI", reserved=HIGH_DWORD, gate=INTR_CTRL, cite="TLFS §10.5; KVM")
def write_eoi(vp: VirtualProcessor, value: int) -> None:
    # TLFS §10.5: write-only (reads #GP, as in KVM and Xen); 63:32 RsvdZ -> #GP like KVM; 31:0 ignored.
    _apic(vp)
    vp.assist.conventional_eoi()  # settles a published NoEoiRequired bit before the EOI


# -- ICR --------------------------------------------------------------------------------------------------
@HV_MSRS.reader(HvMsr.ICR, name="ICR", gate=INTR_CTRL, cite="TLFS §10.5")
def read_icr(vp: VirtualProcessor) -> int:
    # TLFS §10.5: 63:32 = ICR high (APIC 0x310), 31:0 = ICR low (APIC 0x300).
    return _apic(vp).read_icr()


@HV_MSRS.writer(HvMsr.ICR, gate=INTR_CTRL, cite="TLFS §10.5; KVM kvm_x2apic_icr_write")
def write_icr(vp: VirtualProcessor, value: int) -> None:
    # TLFS §10.5: one 64-bit write sends the IPI; the APIC model validates the command (KVM likewise).
    _apic(vp).write_icr(value)


# -- TPR --------------------------------------------------------------------------------------------------
@HV_MSRS.reader(HvMsr.TPR, name="TPR", gate=INTR_CTRL, cite="TLFS §10.5")
def read_tpr(vp: VirtualProcessor) -> int:
    # TLFS §10.5: 7:0 = APIC TPR (0x80).
    return _apic(vp).get_tpr() & TPR_MASK


@HV_MSRS.writer(HvMsr.TPR, reserved=HIGH_DWORD, gate=INTR_CTRL, cite="TLFS §10.5; KVM kvm_lapic_msr_write")
def write_tpr(vp: VirtualProcessor, value: int) -> None:
    # TLFS says 63:8 RsvdZ; KVM #GPs only on 63:32 and the APIC drops 31:8 (TPR is 8 bits): we follow KVM.
    _apic(vp).set_tpr(value & TPR_MASK)


# -- VP_ASSIST_PAGE ---------------------------------------------------------------------------------------
@HV_MSRS.reader(HvMsr.VP_ASSIST_PAGE, name="VP_ASSIST_PAGE", gate=INTR_CTRL, cite="TLFS §7.8.7")
def read_vp_assist_page(vp: VirtualProcessor) -> int:
    # TLFS §7.8.7: 0 Enable, 11:1 RsvdP (read back as 0, the hypervisor's value), 63:12 PFN.
    return vp.vp_assist_msr


@HV_MSRS.writer(HvMsr.VP_ASSIST_PAGE, gate=INTR_CTRL, cite="TLFS §7.8.7; KVM kvm_hv_set_msr")
def write_vp_assist_page(vp: VirtualProcessor, value: int) -> None:
    # TLFS §7.8.7 does not say what a PFN outside the GPA space does; KVM #GPs (like TLFS §3.13 for the
    # hypercall page), we do too. Enabling zeroes the ApicAssist u32 only (KVM keeps the rest of the page).
    # Works without a local APIC: the page also carries non-APIC fields; EOI avoidance just stays off.
    new = value & VP_ASSIST_KEEP
    if new & PAGE_ENABLE:
        gpa = (new >> PAGE_GPFN_SHIFT) << PAGE_GPFN_SHIFT
        if gpa + HV_PAGE_SIZE > vp.partition.memory.size:
            raise GuestFault(gp(f"VP_ASSIST_PAGE: PFN {new >> PAGE_GPFN_SHIFT:#x} is outside guest RAM"))
    vp.assist.set_page_msr(new)
