"""parse_xen: every viridian group, xl list semantics (defaults/all/!group), libxl errors."""

from __future__ import annotations

import pytest

from viridian.config import Enlightenments, parse_xen
from viridian.config.xen import resolve_groups
from viridian.errors import ConfigError

# What "base" alone gives (libxl_x86.c + viridian.c): base fields on, everything else explicit off.
BASE = dict(style="xen", relaxed=True, vapic=True, vpindex=True, reference_tsc=False, ex_processor_masks=False,
            cpu_hotplug=False, apic_assist=False, max_vps=0, max_lps=0, spinlocks=2047,
            version_build=0x1772, version_major=6, version_minor=0)

GROUP_CASES: list[tuple[str, dict[str, object]]] = [
    ("base", {}),
    ("base,freq", {"frequencies": True}),
    ("base,time_ref_count", {"time": True}),
    ("base,reference_tsc", {"reference_tsc": True}),
    ("base,hcall_remote_tlb_flush", {"tlbflush": True}),
    ("base,apic_assist", {"apic_assist": True}),
    ("base,crash_ctl", {"crash": True}),
    ("base,synic", {"synic": True}),
    ("base,stimer", {"stimer": True, "synic": True, "time": True}),  # libxl: stimer => time_ref_count|synic
    ("base,hcall_ipi", {"ipi": True}),
    ("base,ex_processor_masks", {"ex_processor_masks": True}),
    ("base,no_vp_limit", {"max_vps": 0xFFFFFFFF}),
    ("base,cpu_hotplug", {"cpu_hotplug": True}),
    ("base,guest_idle", {"guest_idle": True}),
]


@pytest.mark.parametrize(("groups", "changes"), GROUP_CASES, ids=[c[0] for c in GROUP_CASES])
def test_each_group(groups: str, changes: dict[str, object]) -> None:
    assert parse_xen(groups) == Enlightenments(**{**BASE, **changes})  # type: ignore[arg-type]


DEFAULTS = {"base", "freq", "time_ref_count", "apic_assist", "crash_ctl", "no_vp_limit", "cpu_hotplug"}
ALL = {"base", "freq", "time_ref_count", "reference_tsc", "hcall_remote_tlb_flush", "apic_assist", "crash_ctl",
       "synic", "stimer", "hcall_ipi", "ex_processor_masks", "no_vp_limit", "cpu_hotplug"}


@pytest.mark.parametrize(("spec", "expected"), [
    ("defaults", DEFAULTS),
    ("1", DEFAULTS),
    ("true", DEFAULTS),
    ("viridian=1", DEFAULTS),
    ("0", set()),
    ("false", set()),
    ("", set()),
    ("[]", set()),
    ("all", ALL),
    ('["all", "!freq"]', ALL - {"freq"}),
    ("viridian=['defaults', '!freq', 'stimer']", (DEFAULTS - {"freq"}) | {"stimer"}),
    ("base,freq,!freq", {"base"}),
    ("base,!freq,freq", {"base", "freq"}),
    ("defaults,!cpu_hotplug", DEFAULTS - {"cpu_hotplug"}),
    ("all,guest_idle", ALL | {"guest_idle"}),
    (["base", "hcall_ipi"], {"base", "hcall_ipi"}),
    (("base", " 'crash_ctl' "), {"base", "crash_ctl"}),
])
def test_xl_list_semantics(spec: str | list[str], expected: set[str]) -> None:
    assert resolve_groups(spec) == frozenset(expected)


def test_viridian_1_equals_defaults() -> None:
    c = parse_xen("1")
    assert c == parse_xen("defaults")
    assert (c.frequencies, c.time, c.crash, c.cpu_hotplug, c.apic_assist, c.max_vps) == (
        True, True, True, True, True, 0xFFFFFFFF)
    assert not (c.stimer or c.synic or c.has_reference_tsc or c.tlbflush or c.ipi)


def test_empty_is_no_viridian() -> None:
    c = parse_xen("0")
    assert c.style == "xen" and not c.hyperv_enabled


@pytest.mark.parametrize(("spec", "needle"), [
    ("base,fre", "unknown viridian group 'fre' (did you mean freq?)"),
    ("base,!stimr", "unknown viridian group 'stimr'"),
    ("!all", "unknown viridian group 'all'"),
    ("freq", "requires group 'base'"),
    ("defaults,!base", "requires group 'base'"),
    ("!freq,all", "'freq' both enabled and disabled"),
])
def test_errors(spec: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_xen(spec)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)
