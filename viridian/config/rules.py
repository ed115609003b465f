"""Dependency and value rules for an Enlightenments configuration, per style.

QEMU rules: kvm.c ``kvm_hyperv_properties[].dependencies`` checked by ``hv_feature_check_deps`` in table
order, then the extra SynIC -> VP_INDEX check in ``kvm_hyperv_expand_features``; value widths from the
cpu.c property types. Xen rules: libxl_x86.c ``hvm_set_viridian_features`` (base is a prerequisite of
every group; ``stimer`` implies ``time_ref_count`` and ``synic``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from viridian.errors import ConfigError

if TYPE_CHECKING:
    from viridian.config.enlightenments import Enlightenments

VERSION_PARTS: tuple[str, ...] = ("build", "major", "minor", "spack", "sbranch", "snumber")
# QEMU cpu.c: hv-version-id-build UINT32, -major/-minor UINT16, -spack UINT32, -sbranch UINT8,
# -snumber UINT32 (masked to 24 bits by hyperv_fill_cpuids).
VERSION_BITS: dict[str, int] = {"build": 32, "major": 16, "minor": 16, "spack": 32, "sbranch": 8, "snumber": 32}

# QEMU kvm.c kvm_hyperv_properties[] dependencies, in HYPERV_FEAT_* order (the order QEMU checks).
QEMU_DEPENDENCIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("stimer", ("time", "synic")),
    ("tlbflush", ("vpindex",)),
    ("evmcs", ("vapic",)),
    ("ipi", ("vpindex",)),
    ("stimer_direct", ("stimer",)),
    ("tlbflush_ext", ("tlbflush",)),
    ("tlbflush_direct", ("vapic",)),
    ("synic", ("vpindex",)),  # kvm_hyperv_expand_features: "additional dependencies not covered"
)

# Xen viridian groups (libxl_types.idl libxl_viridian_enlightenment) for each field; "base" is 3 fields.
XEN_GROUP_OF: dict[str, str] = {
    "relaxed": "base", "vapic": "base", "vpindex": "base", "frequencies": "freq",
    "time": "time_ref_count", "reference_tsc": "reference_tsc", "tlbflush": "hcall_remote_tlb_flush",
    "apic_assist": "apic_assist", "crash": "crash_ctl", "synic": "synic", "stimer": "stimer",
    "ipi": "hcall_ipi", "ex_processor_masks": "ex_processor_masks", "cpu_hotplug": "cpu_hotplug",
    "guest_idle": "guest_idle",
}
# Enlightenments Xen has no group for (viridian.c never offers their bits).
QEMU_ONLY: tuple[str, ...] = (
    "runtime", "reset", "stimer_direct", "tlbflush_ext", "tlbflush_direct", "reenlightenment",
    "xmm_input", "avic", "evmcs", "emsr_bitmap",
)


def flag_name(field: str) -> str:
    """The QEMU spelling of a field: ``stimer_direct`` -> ``hv-stimer-direct`` (cpu.c property names)."""
    return "hv-" + field.replace("_", "-")


def _join(names: list[str]) -> str:
    return " and ".join(names)


def check(c: Enlightenments) -> None:
    """Raise ConfigError naming the first offending flag; see the module docstring for sources."""
    _check_values(c)
    if c.style == "qemu":
        _check_qemu(c)
    elif c.style == "xen":
        _check_xen(c)
    else:
        raise ConfigError(f"style: expected 'qemu' or 'xen', got {c.style!r}")


def _check_range(name: str, value: object, bits: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < (1 << bits):
        raise ConfigError(f"{name}: expected an integer 0..{(1 << bits) - 1:#x}, got {value!r}")


def _check_values(c: Enlightenments) -> None:
    _check_range("hv-spinlocks", c.spinlocks, 32)
    for part in VERSION_PARTS:
        _check_range(f"hv-version-id-{part}", getattr(c, f"version_{part}"), VERSION_BITS[part])
    _check_range("x-hv-max-vps", c.max_vps, 32)
    _check_range("x-hv-max-lps", c.max_lps, 32)
    if c.no_nonarch_coresharing not in ("on", "off", "auto"):
        raise ConfigError(f"hv-no-nonarch-coresharing: expected on, off or auto, got {c.no_nonarch_coresharing!r}")
    if not c.vendor_id.isascii() or len(c.vendor_id) > 12:
        # QEMU cpu.c truncates to 12 with a warning; we refuse instead of silently changing it.
        raise ConfigError(f"hv-vendor-id: at most 12 ASCII characters, got {c.vendor_id!r}")


def _check_qemu(c: Enlightenments) -> None:
    for feature, needs in QEMU_DEPENDENCIES:
        missing = [flag_name(n) for n in needs if not getattr(c, n)]
        if getattr(c, feature) and missing:
            raise ConfigError(f"{flag_name(feature)} requires {_join(missing)} (QEMU kvm_hyperv_properties)")
    if c.reference_tsc is not None and c.reference_tsc != c.time:
        raise ConfigError("reference_tsc: QEMU's hv-time offers the reference counter and TSC page together; "
                          "split them only with style='xen'")
    if c.ex_processor_masks is not None and c.ex_processor_masks != (c.tlbflush or c.ipi):
        raise ConfigError("ex_processor_masks: QEMU offers UseExProcessorMasks exactly with hv-tlbflush or "
                          "hv-ipi; set it independently only with style='xen'")
    if c.cpu_hotplug is False and c.hyperv_enabled:
        raise ConfigError("cpu_hotplug: QEMU always offers CpuDynamicPartitioning; disable it only with "
                          "style='xen'")
    if not c.apic_assist:
        raise ConfigError("apic_assist: KVM always performs APIC assist with hv-vapic; disable it only with "
                          "style='xen'")


def _check_xen(c: Enlightenments) -> None:
    for name in QEMU_ONLY:
        if getattr(c, name):
            raise ConfigError(f"{flag_name(name)} has no Xen viridian group (style='xen')")
    if c.no_nonarch_coresharing != "off":
        raise ConfigError("hv-no-nonarch-coresharing has no Xen viridian group (style='xen')")
    base = [c.relaxed, c.vapic, c.vpindex]
    if any(base) and not all(base):
        raise ConfigError("Xen viridian group 'base' offers hv-relaxed, hv-vapic and hv-vpindex together")
    if not all(base):
        for name, group in XEN_GROUP_OF.items():
            if group != "base" and name != "apic_assist" and getattr(c, name):
                raise ConfigError(f"Xen viridian group '{group}' requires group 'base' (libxl)")
    if c.stimer and not (c.time and c.synic):
        raise ConfigError("Xen viridian group 'stimer' requires 'time_ref_count' and 'synic'")
