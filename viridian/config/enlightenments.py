"""The Enlightenments value object: every Hyper-V enlightenment a partition offers, and how to spell it.

One frozen dataclass names every enlightenment (QEMU ``hv-*`` flags, Xen ``viridian`` groups and libvirt
``<hyperv>`` elements all parse into it) plus the identification values (vendor, version, limits).
``style`` selects whose CPUID rules :func:`viridian.partition.cpuid.hv_leaves` follows: ``"qemu"``
(QEMU/KVM, the default) or ``"xen"`` (Xen viridian.c).

Xen splits a few QEMU features more finely (reference counter vs. TSC page, ExProcessorMasks, CPU hotplug,
APIC assist). Those knobs are tri-state where QEMU derives them: ``None`` means "as QEMU derives it".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from viridian.config import rules
from viridian.config.cpuid_edits import CpuidEdit
from viridian.config.rules import flag_name
from viridian.tlfs.cpuid import SPINLOCK_NEVER_NOTIFY, VENDOR_MICROSOFT_HV

Style = Literal["qemu", "xen"]
CoreSharing = Literal["on", "off", "auto"]

# QEMU cpu.c x86_cpu_properties defaults (hv-version-id-* since QEMU 6.2 = WS2016 10.0.14393;
# x-hv-max-vps = -1; hyperv_limits[0] = 64 set in x86_cpu_hyperv_realize).
DEFAULT_VERSION = (0x3839, 0xA, 0, 0, 0, 0)
DEFAULT_MAX_VPS = 0xFFFFFFFF
DEFAULT_MAX_LPS = 64

# Boolean enlightenments in QEMU flag order (the order of to_qemu() and describe()).
FEATURES: tuple[str, ...] = (
    "relaxed", "vapic", "vpindex", "runtime", "crash", "time", "synic", "stimer", "stimer_direct",
    "tlbflush", "tlbflush_ext", "tlbflush_direct", "ipi", "reset", "frequencies", "reenlightenment",
    "xmm_input", "avic", "evmcs", "emsr_bitmap", "guest_idle",
)
EXTENSIONS: frozenset[str] = frozenset({"guest_idle"})  # ours: QEMU/KVM/Xen lack them

_DESCRIPTIONS: dict[str, str] = {
    "relaxed": "relaxed timing (no watchdogs)",
    "vapic": "APIC MSRs (EOI/ICR/TPR) + VP assist page",
    "vpindex": "VP_INDEX MSR",
    "runtime": "VP_RUNTIME MSR",
    "crash": "guest crash MSRs",
    "time": "reference counter MSR + reference TSC page",
    "synic": "synthetic interrupt controller",
    "stimer": "synthetic timers",
    "stimer_direct": "direct-mode synthetic timers",
    "tlbflush": "hypercall TLB flush",
    "tlbflush_ext": "extended GVA ranges for flush",
    "tlbflush_direct": "direct flush for L2 (nested)",
    "ipi": "hypercall IPI",
    "reset": "RESET MSR",
    "frequencies": "TSC/APIC frequency MSRs",
    "reenlightenment": "reenlightenment MSRs",
    "xmm_input": "XMM fast hypercall input",
    "avic": "AutoEOI deprecated (APICv/AVIC)",
    "evmcs": "enlightened VMCS (nested)",
    "emsr_bitmap": "enlightened MSR bitmap (nested)",
    "guest_idle": "GUEST_IDLE MSR (viridian extension)",
}


@dataclass(frozen=True)
class Enlightenments:
    """Every enlightenment and identification value a partition offers (see module docstring)."""

    relaxed: bool = False
    vapic: bool = False
    spinlocks: int = SPINLOCK_NEVER_NOTIFY
    vpindex: bool = False
    runtime: bool = False
    crash: bool = False
    time: bool = False
    synic: bool = False
    stimer: bool = False
    stimer_direct: bool = False
    tlbflush: bool = False
    tlbflush_ext: bool = False
    tlbflush_direct: bool = False
    ipi: bool = False
    reset: bool = False
    frequencies: bool = False
    reenlightenment: bool = False
    xmm_input: bool = False
    avic: bool = False
    evmcs: bool = False
    emsr_bitmap: bool = False
    no_nonarch_coresharing: CoreSharing = "off"
    guest_idle: bool = False
    vendor_id: str = VENDOR_MICROSOFT_HV
    version_build: int = DEFAULT_VERSION[0]
    version_major: int = DEFAULT_VERSION[1]
    version_minor: int = DEFAULT_VERSION[2]
    version_spack: int = DEFAULT_VERSION[3]
    version_sbranch: int = DEFAULT_VERSION[4]
    version_snumber: int = DEFAULT_VERSION[5]
    max_vps: int = DEFAULT_MAX_VPS
    max_lps: int = DEFAULT_MAX_LPS
    style: Style = "qemu"
    # Xen granularity (None = derived as QEMU does; see the properties below).
    reference_tsc: bool | None = None
    ex_processor_masks: bool | None = None
    cpu_hotplug: bool | None = None
    apic_assist: bool = True
    # Bit edits applied to the synthesized leaves (viridian.config.cpuid_edits; --cpuid on the command line).
    cpuid_edits: tuple[CpuidEdit, ...] = ()

    # -- derived -------------------------------------------------------------------------------------
    @property
    def has_reference_tsc(self) -> bool:
        """TSC page offered: QEMU hv-time gives counter and page together; Xen has group reference_tsc."""
        return self.time if self.reference_tsc is None else self.reference_tsc

    @property
    def has_ex_processor_masks(self) -> bool:
        """UseExProcessorMasks: QEMU sets it with hv-tlbflush or hv-ipi (kvm.c kvm_hyperv_properties)."""
        if self.ex_processor_masks is None:
            return self.tlbflush or self.ipi
        return self.ex_processor_masks

    @property
    def has_cpu_hotplug(self) -> bool:
        """CpuDynamicPartitioning: QEMU always sets it (kvm.c hyperv_fill_cpuids); Xen group cpu_hotplug."""
        return self.hyperv_enabled if self.cpu_hotplug is None else self.cpu_hotplug

    @property
    def hyperv_enabled(self) -> bool:
        """Hyper-V identification is offered at all.

        QEMU kvm.c hyperv_enabled(): any hv feature, or hv-spinlocks != 0xFFFFFFFF (vendor/version ids
        alone do not enable it). Xen: the base group (HVM_PARAM_VIRIDIAN != 0).
        """
        if self.style == "xen":
            return self.vpindex or self.vapic or self.relaxed
        return any(getattr(self, name) for name in FEATURES) or self.spinlocks != SPINLOCK_NEVER_NOTIFY

    @property
    def nested(self) -> bool:
        """Leaf 0x4000000A is populated (QEMU: hv-evmcs, hv-tlbflush-direct or hv-emsr-bitmap)."""
        return self.style == "qemu" and (self.evmcs or self.tlbflush_direct or self.emsr_bitmap)

    # -- checks ----------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ConfigError (one line naming the flag and what it needs) if this cannot be offered."""
        rules.check(self)

    # -- spelling --------------------------------------------------------------------------------------
    def to_qemu(self) -> str:
        """Canonical QEMU ``-cpu`` flag string; ``parse_qemu(c.to_qemu()) == c`` for every style="qemu"
        config. A style="xen" config yields its nearest QEMU spelling (it parses back as style="qemu")."""
        out: list[str] = []
        for name in FEATURES:
            if name == "vpindex" and self.spinlocks != SPINLOCK_NEVER_NOTIFY:
                out.append(f"hv-spinlocks={self.spinlocks:#x}")
            if getattr(self, name):
                out.append(flag_name(name))
        if self.no_nonarch_coresharing != "off":
            out.append(f"hv-no-nonarch-coresharing={self.no_nonarch_coresharing}")
        if self.vendor_id != VENDOR_MICROSOFT_HV:
            out.append("hv-vendor-id=" + self.vendor_id.replace(",", ",,"))
        for part, default in zip(rules.VERSION_PARTS, DEFAULT_VERSION, strict=True):
            value = getattr(self, f"version_{part}")
            if value != default:
                out.append(f"hv-version-id-{part}={value:#x}")
        if self.max_vps != DEFAULT_MAX_VPS:
            out.append(f"x-hv-max-vps={self.max_vps:#x}")
        if self.max_lps != DEFAULT_MAX_LPS:
            out.append(f"x-hv-max-lps={self.max_lps:#x}")
        return ",".join(out)

    def describe(self) -> list[tuple[str, str, str]]:
        """Rows ``(setting, value, meaning)`` for a table: every enlightenment plus identification."""
        rows: list[tuple[str, str, str]] = [("style", self.style, "CPUID rules followed")]
        for name in FEATURES:
            rows.append((flag_name(name), "on" if getattr(self, name) else "off", _DESCRIPTIONS[name]))
        spin = "never" if self.spinlocks == SPINLOCK_NEVER_NOTIFY else f"{self.spinlocks:#x}"
        rows.append(("hv-spinlocks", spin, "spinlock retries before NotifyLongSpinWait"))
        rows.append(("hv-no-nonarch-coresharing", self.no_nonarch_coresharing, "no non-SMT core sharing"))
        rows.append(("hv-vendor-id", self.vendor_id, "0x40000000 vendor string"))
        version = (f"{self.version_major}.{self.version_minor}.{self.version_build} "
                   f"SP{self.version_spack} {self.version_sbranch}.{self.version_snumber}")
        rows.append(("hv-version-id", version, "0x40000002 hypervisor version"))
        rows.append(("max VPs / LPs", f"{self.max_vps:#x} / {self.max_lps:#x}", "0x40000005 limits"))
        if self.style == "xen":
            for name in ("reference_tsc", "ex_processor_masks", "cpu_hotplug", "apic_assist"):
                rows.append((name, "on" if getattr(self, name) else "off", "Xen viridian group"))
        for edit in self.cpuid_edits:
            rows.append(("cpuid edit", str(edit), "applied after synthesis"))
        return rows

    def replace(self, **changes: object) -> Enlightenments:
        """A copy with ``changes`` applied (dataclasses.replace; unknown names raise TypeError)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
