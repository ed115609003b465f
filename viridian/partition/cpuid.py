"""Hypervisor CPUID synthesis (leaves 0x40000000-0x4000000A) from an Enlightenments config. Pure functions.

``style="qemu"`` reproduces what QEMU/KVM put in the guest's CPUID (kvm.c ``hyperv_fill_cpuids`` over the
``kvm_hyperv_properties`` table); ``style="xen"`` reproduces Xen's ``cpuid_viridian_leaves`` (viridian.c).

Absent leaves read as zero. KVM returns zeros for a missing leaf inside a class's range, and for one
beyond the class maximum on AMD guests (cpuid.c get_out_of_range_cpuid_entry); on Intel guests it would
return the max *basic* leaf instead, which belongs to the machine, not this model -- we return zeros.
QEMU itself zero-fills 0x40000006-0x40000009 when it publishes 0x4000000A.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from viridian.config.enlightenments import Enlightenments
from viridian.tlfs.cpuid import (
    EVMCS_VERSION,
    HV_INTERFACE_SIGNATURE,
    Feature,
    Leaf,
    NestedOptimization,
    PartitionPrivilege,
    PowerFeatures,
    Recommendation,
    vendor_registers,
)

FIRST_LEAF = int(Leaf.VENDOR_AND_MAX)
LAST_LEAF = int(Leaf.NESTED_OPTIMIZATIONS)
QEMU_MAX_LEAF = int(Leaf.LIMITS)  # kvm.c: HV_CPUID_IMPLEMENT_LIMITS, or NESTED_FEATURES if nested
XEN_MAX_LEAF = int(Leaf.HARDWARE_FEATURES)  # viridian.c: "Maximum leaf" 0x40000006 (since Xen 3.4)

P = PartitionPrivilege
R = Recommendation
N = NestedOptimization
_FEATURES, _RECOMMEND, _NESTED = int(Leaf.FEATURES), int(Leaf.RECOMMENDATIONS), int(Leaf.NESTED_OPTIMIZATIONS)

# QEMU kvm.c kvm_hyperv_properties[]: field -> (leaf, register, bits). EAX/EBX of 0x40000003 are the
# low/high halves of the 64-bit privilege mask. "guest_idle" is our extension (QEMU/KVM lack it).
QEMU_BITS: tuple[tuple[str, int, str, int], ...] = (
    ("relaxed", _RECOMMEND, "eax", R.RELAXED_TIMING),
    ("vapic", _FEATURES, "eax", P.ACCESS_INTR_CTRL_REGS),
    ("time", _FEATURES, "eax", P.ACCESS_PARTITION_REFERENCE_COUNTER | P.ACCESS_PARTITION_REFERENCE_TSC),
    ("crash", _FEATURES, "edx", Feature.GUEST_CRASH_REGS),
    ("reset", _FEATURES, "eax", P.ACCESS_RESET_REG),
    ("vpindex", _FEATURES, "eax", P.ACCESS_VP_INDEX),
    ("runtime", _FEATURES, "eax", P.ACCESS_VP_RUNTIME_REG),
    ("synic", _FEATURES, "eax", P.ACCESS_SYNIC_REGS),
    ("stimer", _FEATURES, "eax", P.ACCESS_SYNTHETIC_TIMER_REGS),
    ("frequencies", _FEATURES, "eax", P.ACCESS_FREQUENCY_REGS),
    ("frequencies", _FEATURES, "edx", Feature.FREQUENCY_REGS),
    ("reenlightenment", _FEATURES, "eax", P.ACCESS_REENLIGHTENMENT_CONTROLS),
    ("tlbflush", _RECOMMEND, "eax", R.REMOTE_FLUSH_HYPERCALL | R.EX_PROCESSOR_MASKS),
    ("evmcs", _RECOMMEND, "eax", R.ENLIGHTENED_VMCS),
    ("ipi", _RECOMMEND, "eax", R.SYNTHETIC_CLUSTER_IPI | R.EX_PROCESSOR_MASKS),
    ("stimer_direct", _FEATURES, "edx", Feature.DIRECT_SYNTHETIC_TIMERS),
    ("avic", _RECOMMEND, "eax", R.DEPRECATE_AUTO_EOI),
    ("emsr_bitmap", _NESTED, "eax", N.ENLIGHTENED_MSR_BITMAP),
    ("xmm_input", _FEATURES, "edx", Feature.XMM_HYPERCALL_INPUT),
    ("tlbflush_ext", _FEATURES, "edx", Feature.EXTENDED_GVA_RANGES_FOR_FLUSH_VA_LIST),
    ("tlbflush_direct", _NESTED, "eax", N.DIRECT_VIRTUAL_FLUSH),
    ("guest_idle", _FEATURES, "eax", P.ACCESS_GUEST_IDLE_REG),
    ("guest_idle", _FEATURES, "edx", Feature.GUEST_IDLE_STATE),
)

# Xen viridian.c models the host; ours is a software vCPU: no APIC register virtualization (so
# UseApicMsrs is recommended) and, for leaf 6, no APIC overlay, MSR bitmaps or SLAT in use.
XEN_HOST_HW_FEATURES = 0
XEN_MIN_OS_FOR_RECOMMENDATIONS = 4  # viridian.c: leaf 4 empty unless guest_os_id.os >= 4 (Windows NT)


@dataclass(frozen=True)
class CpuidRegs:
    """One CPUID result."""

    eax: int
    ebx: int
    ecx: int
    edx: int


ZERO = CpuidRegs(0, 0, 0, 0)


def _low(flags: int) -> int:
    return int(flags) & 0xFFFFFFFF


def _version(c: Enlightenments) -> CpuidRegs:
    """0x40000002 (QEMU kvm.c hyperv_fill_cpuids: EDX = sbranch << 24 | snumber & 0xFFFFFF)."""
    return CpuidRegs(c.version_build, (c.version_major << 16) | c.version_minor, c.version_spack,
                     ((c.version_sbranch & 0xFF) << 24) | (c.version_snumber & 0xFFFFFF))


def _identity(c: Enlightenments, max_leaf: int) -> dict[int, CpuidRegs]:
    ebx, ecx, edx = vendor_registers(c.vendor_id)
    return {FIRST_LEAF: CpuidRegs(max_leaf, ebx, ecx, edx),
            FIRST_LEAF + 1: CpuidRegs(HV_INTERFACE_SIGNATURE, 0, 0, 0)}


def _qemu_leaves(c: Enlightenments) -> dict[int, CpuidRegs]:
    """QEMU kvm.c hyperv_fill_cpuids + hv_build_cpuid_leaf."""
    acc: dict[tuple[int, str], int] = {}
    for name, leaf, reg, bits in QEMU_BITS:
        if getattr(c, name):
            acc[leaf, reg] = acc.get((leaf, reg), 0) | int(bits)
    privileges = acc.get((_FEATURES, "eax"), 0) | P.ACCESS_HYPERCALL_MSRS  # "unconditionally required"
    if c.synic:  # "SynIC and Vmbus devices require messages/signals hypercalls"
        privileges |= P.POST_MESSAGES | P.SIGNAL_EVENTS
    features = acc.get((_FEATURES, "edx"), 0)
    if c.has_cpu_hotplug:  # "needed to make CPU hotplug in Windows work"
        features |= Feature.CPU_DYNAMIC_PARTITIONING
    recommend = acc.get((_RECOMMEND, "eax"), 0)
    if c.vapic and not c.avic:
        recommend |= R.APIC_MSRS
    if c.no_nonarch_coresharing != "off":
        # "auto" copies KVM's bit, set when SMT is impossible on the host; our vCPUs all run on one
        # host thread, so no core is ever shared: auto behaves as on.
        recommend |= R.NO_NONARCHITECTURAL_CORE_SHARING
    nested = acc.get((_NESTED, "eax"), 0) | (EVMCS_VERSION if c.evmcs else 0)
    leaves = _identity(c, LAST_LEAF if nested else QEMU_MAX_LEAF)
    leaves[FIRST_LEAF + 2] = _version(c)
    leaves[_FEATURES] = CpuidRegs(_low(privileges), int(privileges) >> 32, 0, int(features))
    leaves[_RECOMMEND] = CpuidRegs(int(recommend), c.spinlocks, 0, 0)
    leaves[int(Leaf.LIMITS)] = CpuidRegs(c.max_vps, c.max_lps, 0, 0)
    if nested:
        leaves[_NESTED] = CpuidRegs(nested, 0, 0, 0)
    return leaves


def _xen_leaves(c: Enlightenments, guest_os_id: int) -> dict[int, CpuidRegs]:
    """Xen viridian.c cpuid_viridian_leaves.

    Guest-OS-ID dependent: 0x40000002 reads zero until the guest writes a non-zero GUEST_OS_ID;
    0x40000004 reads zero unless GUEST_OS_ID != 0 and its OS field (bits 47:40) is >= 4.
    """
    leaves = _identity(c, XEN_MAX_LEAF)
    if guest_os_id:
        leaves[FIRST_LEAF + 2] = _version(c)
    privileges = P.ACCESS_HYPERCALL_MSRS  # mask {AccessIntrCtrlRegs, AccessHypercallMsrs, AccessVpIndex}
    for on, bit in ((c.vapic, P.ACCESS_INTR_CTRL_REGS), (c.vpindex, P.ACCESS_VP_INDEX),
                    (c.frequencies, P.ACCESS_FREQUENCY_REGS), (c.time, P.ACCESS_PARTITION_REFERENCE_COUNTER),
                    (c.has_reference_tsc, P.ACCESS_PARTITION_REFERENCE_TSC), (c.synic, P.ACCESS_SYNIC_REGS),
                    (c.stimer, P.ACCESS_SYNTHETIC_TIMER_REGS), (c.guest_idle, P.ACCESS_GUEST_IDLE_REG)):
        if on:
            privileges |= bit
    features = 0
    for on, fbit in ((c.has_cpu_hotplug, Feature.CPU_DYNAMIC_PARTITIONING), (c.crash, Feature.GUEST_CRASH_REGS),
                     (c.synic, Feature.SINT_POLLING_MODE), (c.guest_idle, Feature.GUEST_IDLE_STATE)):
        if on:
            features |= fbit
    leaves[_FEATURES] = CpuidRegs(_low(privileges), int(privileges) >> 32, 0, int(features))
    os_field = (guest_os_id >> 40) & 0xFF
    if guest_os_id and os_field >= XEN_MIN_OS_FOR_RECOMMENDATIONS:
        recommend = 0
        for on, rbit in ((c.relaxed, R.RELAXED_TIMING), (c.tlbflush, R.REMOTE_FLUSH_HYPERCALL),
                         (c.vapic, R.APIC_MSRS), (c.ipi, R.SYNTHETIC_CLUSTER_IPI),
                         (c.has_ex_processor_masks, R.EX_PROCESSOR_MASKS)):
            if on:
                recommend |= rbit
        leaves[_RECOMMEND] = CpuidRegs(int(recommend), c.spinlocks, 0, 0)
    leaves[int(Leaf.LIMITS)] = CpuidRegs(c.max_vps, c.max_lps, 0, 0)
    leaves[int(Leaf.HARDWARE_FEATURES)] = CpuidRegs(XEN_HOST_HW_FEATURES, 0, 0, 0)
    return leaves


def hv_leaves(config: Enlightenments, guest_os_id: int = 0) -> dict[int, CpuidRegs]:
    """Every leaf 0x40000000-0x4000000A for ``config`` (absent ones zero; see module docstring).

    No enlightenment at all (``not config.hyperv_enabled``) gives all zeros: no "Hv#1", max leaf 0.
    ``guest_os_id`` (the partition's GUEST_OS_ID MSR) only matters for style="xen"; KVM ignores it.
    """
    out = dict.fromkeys(range(FIRST_LEAF, LAST_LEAF + 1), ZERO)
    if config.hyperv_enabled:
        out.update(_xen_leaves(config, guest_os_id) if config.style == "xen" else _qemu_leaves(config))
    for edit in config.cpuid_edits:  # --cpuid LEAF.REG(+|-|=)VALUE, after synthesis
        regs = out.get(edit.leaf, ZERO)
        out[edit.leaf] = dataclasses.replace(regs, **{edit.reg: edit.apply(getattr(regs, edit.reg))})
    return out


@dataclass(frozen=True)
class Offer:
    """What the leaves offer, decoded once for cheap gating (KVM enforce_cpuid semantics).

    The ``*_mask`` ints are precomputed for hot paths; the IntFlag fields are for display.
    """

    hv_present: bool
    max_leaf: int
    privileges: PartitionPrivilege
    power: PowerFeatures
    features: Feature
    recommendations: Recommendation
    spin_retries: int
    max_vps: int
    max_lps: int
    nested_eax: int
    privilege_mask: int
    feature_mask: int
    recommendation_mask: int

    @classmethod
    def from_leaves(cls, leaves: Mapping[int, CpuidRegs]) -> Offer:
        """Decode 0x40000000-0x4000000A (missing leaves count as zero)."""
        def get(leaf: int) -> CpuidRegs:
            return leaves.get(leaf, ZERO)

        features, recommend, limits = get(_FEATURES), get(_RECOMMEND), get(int(Leaf.LIMITS))
        privilege_mask = features.eax | (features.ebx << 32)
        return cls(
            hv_present=get(FIRST_LEAF + 1).eax == HV_INTERFACE_SIGNATURE,
            max_leaf=get(FIRST_LEAF).eax,
            privileges=PartitionPrivilege(privilege_mask),
            power=PowerFeatures(features.ecx),
            features=Feature(features.edx),
            recommendations=Recommendation(recommend.eax),
            spin_retries=recommend.ebx,
            max_vps=limits.eax,
            max_lps=limits.ebx,
            nested_eax=get(_NESTED).eax,
            privilege_mask=privilege_mask,
            feature_mask=features.edx,
            recommendation_mask=recommend.eax,
        )

    def has_privilege(self, bits: int) -> bool:
        """All of ``bits`` of the privilege mask offered (and Hv#1 present)."""
        return self.hv_present and (self.privilege_mask & bits) == bits

    def has_feature(self, bits: int) -> bool:
        """All of ``bits`` of 0x40000003.EDX offered (and Hv#1 present)."""
        return self.hv_present and (self.feature_mask & bits) == bits

    def has_recommendation(self, bits: int) -> bool:
        """All of ``bits`` of 0x40000004.EAX offered (and Hv#1 present)."""
        return self.hv_present and (self.recommendation_mask & bits) == bits
