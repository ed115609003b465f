"""What ``viridian boot`` offers a Linux kernel by default (issue 7): the recommended preset plus frequencies,
reenlightenment off -- the ``linux`` preset. TLFS: AccessFrequencyMsrs (0x40000003.EAX bit 11) and the
frequency-MSRs feature (EDX bit 8) offered, HV_X64_MSR_TSC_FREQUENCY / APIC_FREQUENCY readable;
AccessReenlightenmentControls (EAX bit 13) not offered, so HV_X64_MSR_REENLIGHTENMENT_CONTROL #GPs (KVM
enforce_cpuid)."""

from __future__ import annotations

from msr import Fault
from viridian.abi.memory import BytesMemory
from viridian.cli.boot_cmd import DEFAULT_PRESET, boot_config
from viridian.cli.main import build_parser
from viridian.config.presets import get_preset
from viridian.partition.partition import Partition
from viridian.tlfs.cpuid import Feature, PartitionPrivilege
from viridian.tlfs.msrs import HvMsr


def _default_offer() -> Partition:
    args = build_parser().parse_args(["boot", "bzImage"])
    return Partition(boot_config(args), BytesMemory(1 << 20), vp_count=1)


def test_default_is_recommended_minus_reenlightenment() -> None:
    args = build_parser().parse_args(["boot", "bzImage"])
    assert DEFAULT_PRESET == "linux"
    assert boot_config(args) == get_preset("recommended").replace(reenlightenment=False)
    assert get_preset("recommended").reenlightenment  # the shared preset keeps its meaning


def test_cpuid_offers_frequencies_not_reenlightenment() -> None:
    p = _default_offer()
    leaf = p.cpuid(0x4000_0003, 0)
    assert leaf is not None
    assert leaf.eax & PartitionPrivilege.ACCESS_FREQUENCY_REGS
    assert leaf.edx & Feature.FREQUENCY_REGS
    assert not leaf.eax & PartitionPrivilege.ACCESS_REENLIGHTENMENT_CONTROLS
    rec = Partition(get_preset("recommended"), BytesMemory(1 << 20), vp_count=1).cpuid(0x4000_0003, 0)
    assert rec is not None and leaf.eax == rec.eax & ~PartitionPrivilege.ACCESS_REENLIGHTENMENT_CONTROLS
    assert (leaf.ebx, leaf.edx) == (rec.ebx, rec.edx)


def test_msrs_follow_the_offer() -> None:
    vp = _default_offer().vps[0]
    tsc_hz, apic_hz = vp.rdmsr(HvMsr.TSC_FREQUENCY), vp.rdmsr(HvMsr.APIC_FREQUENCY)
    assert isinstance(tsc_hz, int) and tsc_hz > 0 and isinstance(apic_hz, int) and apic_hz > 0
    assert isinstance(vp.rdmsr(HvMsr.REENLIGHTENMENT_CONTROL), Fault)
    assert isinstance(vp.wrmsr(HvMsr.REENLIGHTENMENT_CONTROL, 0x10030), Fault)


def test_an_explicit_offer_wins() -> None:
    args = build_parser().parse_args(["boot", "bzImage", "--preset", "recommended"])
    assert boot_config(args).reenlightenment
