"""Presets and load_config/resolve: exactly one source, file errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from viridian.config import PRESETS, Enlightenments, get_preset, load_config, parse_qemu, parse_xen, resolve
from viridian.errors import ConfigError, UserError


def test_preset_names() -> None:
    assert set(PRESETS) >= {"none", "xen-3.4", "recommended", "all"}
    for name in PRESETS:
        get_preset(name).validate()


def test_none_offers_nothing() -> None:
    assert get_preset("none") == Enlightenments()
    assert not get_preset("none").hyperv_enabled


def test_xen_34_is_base_with_xen_34_identity() -> None:
    c = get_preset("xen-3.4")
    assert c.style == "xen"
    assert (c.relaxed, c.vapic, c.vpindex) == (True, True, True)
    assert not (c.frequencies or c.time or c.has_reference_tsc or c.crash or c.synic or c.has_cpu_hotplug)
    assert (c.version_build, c.version_major, c.version_minor) == (1, 3, 4)
    assert (c.spinlocks, c.max_vps, c.apic_assist) == (2047, 0, False)


def test_recommended() -> None:
    c = get_preset("recommended")
    on = {"relaxed", "vapic", "vpindex", "runtime", "crash", "time", "synic", "stimer", "stimer_direct", "tlbflush",
          "tlbflush_ext", "ipi", "frequencies", "reenlightenment", "xmm_input", "guest_idle"}
    off = {"reset", "evmcs", "emsr_bitmap", "tlbflush_direct", "avic"}
    assert all(getattr(c, n) for n in on)
    assert not any(getattr(c, n) for n in off)
    assert c.spinlocks == 0xFFF and c.no_nonarch_coresharing == "off"


def test_all_has_everything() -> None:
    c = get_preset("all")
    for name in ("relaxed", "vapic", "vpindex", "runtime", "crash", "time", "synic", "stimer", "stimer_direct",
                 "tlbflush", "tlbflush_ext", "tlbflush_direct", "ipi", "reset", "frequencies", "reenlightenment",
                 "xmm_input", "avic", "evmcs", "emsr_bitmap", "guest_idle"):
        assert getattr(c, name), name
    assert c.no_nonarch_coresharing == "on"


def test_xen_defaults() -> None:
    assert get_preset("xen-defaults") == parse_xen("1")


def test_unknown_preset_lists_names() -> None:
    with pytest.raises(ConfigError, match=r"unknown preset 'fast'.*recommended"):
        get_preset("fast")


def test_load_config_sources(tmp_path: Path) -> None:
    xml = tmp_path / "dom.xml"
    xml.write_text("<hyperv><relaxed state='on'/></hyperv>")
    assert load_config(hv="hv-relaxed") == Enlightenments(relaxed=True)
    assert load_config(xen="base") == parse_xen("base")
    assert load_config(libvirt_path=str(xml)) == Enlightenments(relaxed=True)
    assert load_config(preset="all") == get_preset("all")


@pytest.mark.parametrize("kwargs", [{}, {"hv": "hv-relaxed", "xen": "base"}, {"preset": "all", "libvirt_path": "x"}])
def test_load_config_needs_exactly_one(kwargs: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="exactly one of --hv, --xen, --libvirt, --preset"):
        load_config(**kwargs)


def test_unreadable_libvirt_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.xml"
    with pytest.raises(UserError, match=r"nope\.xml"):  # one line through the CLI (ConfigError is a UserError)
        load_config(libvirt_path=str(missing))
    with pytest.raises(UserError, match=re.escape(tmp_path.name)):
        load_config(libvirt_path=str(tmp_path))  # a directory


def test_resolve() -> None:
    assert resolve("hv-relaxed") == parse_qemu("hv-relaxed")
    assert resolve("preset:none") == Enlightenments()
    assert resolve("xen:base,freq") == parse_xen("base,freq")
