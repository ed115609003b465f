"""Time MSRs: TIME_REF_COUNT, REFERENCE_TSC, TSC/APIC_FREQUENCY, re-enlightenment, invariant TSC
(TLFS §12.4, §12.7; KVM hyperv.c for the MSRs the TLFS barely describes)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from msr.faults import GuestFault, gp
from viridian.partition.gates import privilege
from viridian.partition.msrs import HV_MSRS
from viridian.tlfs.cpuid import PartitionPrivilege
from viridian.tlfs.msrs import TSC_EMULATION_ENABLED, TSC_INVARIANT_EXPOSE, HvMsr

if TYPE_CHECKING:
    from viridian.partition.vp import VirtualProcessor

MASK64: Final = (1 << 64) - 1
REENLIGHTENMENT_RSVDZ: Final = (0xFF << 8) | (0x7FFF << 17)  # 15:8 and 31:17

REF_COUNTER = privilege(PartitionPrivilege.ACCESS_PARTITION_REFERENCE_COUNTER)
REF_TSC = privilege(PartitionPrivilege.ACCESS_PARTITION_REFERENCE_TSC)
FREQUENCY = privilege(PartitionPrivilege.ACCESS_FREQUENCY_REGS)
REENLIGHTENMENT = privilege(PartitionPrivilege.ACCESS_REENLIGHTENMENT_CONTROLS)
TSC_INVARIANT = privilege(PartitionPrivilege.ACCESS_TSC_INVARIANT_CONTROLS)


@HV_MSRS.reader(HvMsr.TIME_REF_COUNT, name="TIME_REF_COUNT", gate=REF_COUNTER, cite="TLFS §12.4")
def read_time_ref_count(vp: VirtualProcessor) -> int:
    # TLFS §12.4: 100 ns since partition creation, via the TSC-page formula; no writer: WRMSR #GPs.
    return vp.partition.reference_time()


@HV_MSRS.reader(HvMsr.REFERENCE_TSC, name="REFERENCE_TSC", gate=REF_TSC, cite="TLFS §12.7")
def read_reference_tsc(vp: VirtualProcessor) -> int:
    # TLFS §12.7: 0 Enable, 11:1 RsvdP, 63:12 GPFN.
    return vp.partition.time.reference_tsc_msr


@HV_MSRS.writer(HvMsr.REFERENCE_TSC, gate=REF_TSC, cite="TLFS §12.7; KVM kvm_hv_setup_tsc_page")
def write_reference_tsc(vp: VirtualProcessor, value: int) -> None:
    # TLFS §12.7 / KVM: enabling (re)writes the page with a bumped sequence; outside RAM: no #GP.
    with vp.partition.overlay_change():
        vp.partition.time.write_msr(value)


@HV_MSRS.reader(HvMsr.TSC_FREQUENCY, name="TSC_FREQUENCY", gate=FREQUENCY, cite="TLFS §12.x; KVM A11")
def read_tsc_frequency(vp: VirtualProcessor) -> int:
    # KVM: read-only, gated by AccessFrequencyRegs alone (no writer -> #GP).
    return vp.partition.clock.tsc_hz


@HV_MSRS.reader(HvMsr.APIC_FREQUENCY, name="APIC_FREQUENCY", gate=FREQUENCY, cite="TLFS §12.x; KVM A11")
def read_apic_frequency(vp: VirtualProcessor) -> int:
    # KVM: APIC timer frequency (1 GHz bus), read-only.
    return vp.partition.clock.apic_hz


@HV_MSRS.reader(HvMsr.REENLIGHTENMENT_CONTROL, name="REENLIGHTENMENT_CONTROL", gate=REENLIGHTENMENT,
                cite="TLFS App. C; KVM")
def read_reenlightenment(vp: VirtualProcessor) -> int:
    # TLFS: 7:0 Vector, 16 Enabled, 63:32 TargetVp; partition-wide (KVM).
    return vp.partition.time.reenlightenment_control


@HV_MSRS.writer(HvMsr.REENLIGHTENMENT_CONTROL, reserved=REENLIGHTENMENT_RSVDZ, gate=REENLIGHTENMENT,
                cite="TLFS App. C; KVM stores verbatim")
def write_reenlightenment(vp: VirtualProcessor, value: int) -> None:
    # TLFS: 15:8 and 31:17 RsvdZ -> #GP here (KVM stores any value); vector/target used on frequency change.
    vp.partition.time.reenlightenment_control = value


@HV_MSRS.reader(HvMsr.TSC_EMULATION_CONTROL, name="TSC_EMULATION_CONTROL", gate=REENLIGHTENMENT,
                cite="KVM: gated by AccessReenlightenmentControls")
def read_tsc_emulation_control(vp: VirtualProcessor) -> int:
    # KVM: partition-wide, gated like REENLIGHTENMENT_CONTROL; bit 0 Enabled.
    return vp.partition.time.tsc_emulation_control


@HV_MSRS.writer(HvMsr.TSC_EMULATION_CONTROL, reserved=MASK64 & ~TSC_EMULATION_ENABLED, gate=REENLIGHTENMENT,
                cite="Linux hv_tsc_emulation_control; KVM")
def write_tsc_emulation_control(vp: VirtualProcessor, value: int) -> None:
    # Linux hyperv-tlfs.h: bit 0 Enabled, 63:1 reserved (RsvdZ -> #GP here; KVM stores any value).
    vp.partition.time.tsc_emulation_control = value


@HV_MSRS.reader(HvMsr.TSC_EMULATION_STATUS, name="TSC_EMULATION_STATUS", gate=REENLIGHTENMENT,
                cite="KVM")
def read_tsc_emulation_status(vp: VirtualProcessor) -> int:
    # KVM: bit 0 InProgress, set by the host when the TSC frequency changed.
    return vp.partition.time.tsc_emulation_status


@HV_MSRS.writer(HvMsr.TSC_EMULATION_STATUS, gate=REENLIGHTENMENT, cite="KVM: guest may only write 0")
def write_tsc_emulation_status(vp: VirtualProcessor, value: int) -> None:
    # KVM: a guest write of anything but 0 #GPs; 0 acknowledges the frequency change.
    if value:
        raise GuestFault(gp("TSC_EMULATION_STATUS: only 0 may be written"))
    vp.partition.time.tsc_emulation_status = 0


@HV_MSRS.reader(HvMsr.TSC_INVARIANT_CONTROL, name="TSC_INVARIANT_CONTROL", gate=TSC_INVARIANT,
                cite="KVM (Linux hyperv-tlfs.h)")
def read_tsc_invariant_control(vp: VirtualProcessor) -> int:
    # KVM: bit 0 ExposeInvariantTsc; partition-wide.
    return vp.partition.time.tsc_invariant_control


@HV_MSRS.writer(HvMsr.TSC_INVARIANT_CONTROL, reserved=MASK64 & ~TSC_INVARIANT_EXPOSE, gate=TSC_INVARIANT,
                cite="KVM: only bit 0; cannot be cleared by the guest")
def write_tsc_invariant_control(vp: VirtualProcessor, value: int) -> None:
    # KVM: bits other than 0 #GP; clearing it once set #GPs (only a reset clears it).
    time = vp.partition.time
    if time.tsc_invariant_control and not value:
        raise GuestFault(gp("TSC_INVARIANT_CONTROL: cannot be cleared once set"))
    time.tsc_invariant_control = value
