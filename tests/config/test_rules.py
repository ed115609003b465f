"""validate(): QEMU dependency table, value ranges, style-specific fields."""

from __future__ import annotations

import pytest

from viridian.config import Enlightenments, parse_qemu
from viridian.errors import ConfigError

# QEMU kvm.c kvm_hyperv_properties[].dependencies (+ the SynIC -> VP_INDEX check): the offending flag
# and every missing dependency must be named in one line.
DEPENDENCY_CASES: list[tuple[str, str]] = [
    ("hv-vpindex,hv-synic,hv-stimer", "hv-stimer requires hv-time"),
    ("hv-time,hv-stimer", "hv-stimer requires hv-synic"),
    ("hv-stimer", "hv-stimer requires hv-time and hv-synic"),
    ("hv-synic", "hv-synic requires hv-vpindex"),
    ("hv-tlbflush", "hv-tlbflush requires hv-vpindex"),
    ("hv-ipi", "hv-ipi requires hv-vpindex"),
    ("hv-evmcs", "hv-evmcs requires hv-vapic"),
    ("hv-vpindex,hv-synic,hv-time,hv-stimer-direct", "hv-stimer-direct requires hv-stimer"),
    ("hv-vpindex,hv-tlbflush-ext", "hv-tlbflush-ext requires hv-tlbflush"),
    ("hv-tlbflush-direct", "hv-tlbflush-direct requires hv-vapic"),
]


@pytest.mark.parametrize(("flags", "needle"), DEPENDENCY_CASES, ids=[c[0] for c in DEPENDENCY_CASES])
def test_dependency_violations(flags: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_qemu(flags)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_independent_flags_have_no_dependencies() -> None:
    for flag in ("hv-relaxed", "hv-vapic", "hv-vpindex", "hv-runtime", "hv-crash", "hv-time", "hv-reset",
                 "hv-frequencies", "hv-reenlightenment", "hv-xmm-input", "hv-avic", "hv-emsr-bitmap",
                 "hv-guest-idle"):
        parse_qemu(flag)


@pytest.mark.parametrize(("config", "needle"), [
    (Enlightenments(spinlocks=-1), "hv-spinlocks"),
    (Enlightenments(spinlocks=1 << 32), "hv-spinlocks"),
    (Enlightenments(version_major=0x10000), "hv-version-id-major"),
    (Enlightenments(version_sbranch=0x100), "hv-version-id-sbranch"),
    (Enlightenments(max_vps=-1), "x-hv-max-vps"),
    (Enlightenments(vendor_id="Mïcrosoft"), "hv-vendor-id"),
    (Enlightenments(no_nonarch_coresharing="maybe"), "hv-no-nonarch-coresharing"),  # type: ignore[arg-type]
    (Enlightenments(style="kvm"), "style"),  # type: ignore[arg-type]
    # Xen-only granularity refused for style="qemu"
    (Enlightenments(time=True, reference_tsc=False), "reference_tsc"),
    (Enlightenments(vpindex=True, ipi=True, ex_processor_masks=False), "ex_processor_masks"),
    (Enlightenments(relaxed=True, cpu_hotplug=False), "cpu_hotplug"),
    (Enlightenments(vapic=True, apic_assist=False), "apic_assist"),
    # QEMU-only features refused for style="xen"
    (Enlightenments(style="xen", relaxed=True, vapic=True, vpindex=True, runtime=True), "hv-runtime has no Xen"),
    (Enlightenments(style="xen", relaxed=True, vapic=True, vpindex=True, no_nonarch_coresharing="on"),
     "no Xen viridian group"),
    (Enlightenments(style="xen", relaxed=True), "'base' offers hv-relaxed, hv-vapic and hv-vpindex together"),
    (Enlightenments(style="xen", crash=True), "'crash_ctl' requires group 'base'"),
    (Enlightenments(style="xen", relaxed=True, vapic=True, vpindex=True, stimer=True, synic=True),
     "'stimer' requires 'time_ref_count' and 'synic'"),
])
def test_validate_direct_construction(config: Enlightenments, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.validate()
    assert needle in str(info.value)


def test_consistent_tristates_are_accepted_for_qemu() -> None:
    Enlightenments(time=True, reference_tsc=True, vpindex=True, ipi=True, ex_processor_masks=True,
                   cpu_hotplug=True).validate()


def test_derived_properties() -> None:
    c = parse_qemu("hv-vpindex,hv-ipi,hv-time")
    assert c.has_reference_tsc and c.has_ex_processor_masks and c.has_cpu_hotplug and c.hyperv_enabled
    assert not c.nested
    assert parse_qemu("hv-vapic,hv-evmcs").nested
    assert not Enlightenments().hyperv_enabled
    assert Enlightenments(spinlocks=0x1FFF).hyperv_enabled  # QEMU hyperv_enabled(): spinlocks count
    assert not Enlightenments(vendor_id="X", version_build=1, no_nonarch_coresharing="on").hyperv_enabled


def test_describe_rows() -> None:
    rows = parse_qemu("hv-relaxed,hv-spinlocks=0x1fff").describe()
    table = {name: value for name, value, _ in rows}
    assert table["hv-relaxed"] == "on" and table["hv-vapic"] == "off"
    assert table["hv-spinlocks"] == "0x1fff" and table["style"] == "qemu"
    assert table["hv-vendor-id"] == "Microsoft Hv" and table["hv-version-id"] == "10.0.14393 SP0 0.0"
    assert all(len(row) == 3 for row in rows)


def test_replace() -> None:
    assert Enlightenments().replace(relaxed=True) == Enlightenments(relaxed=True)
    with pytest.raises(TypeError):
        Enlightenments().replace(bogus=True)
