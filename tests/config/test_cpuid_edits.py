"""CPUID edits (--cpuid): parse, apply after synthesis, and the partition's gating follows the edited bits."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from msr.faults import Fault
from viridian.abi.memory import BytesMemory
from viridian.config.cpuid_edits import CpuidEdit, parse_edit
from viridian.config.presets import load_config
from viridian.errors import ConfigError
from viridian.partition.cpuid import hv_leaves
from viridian.partition.partition import Partition


@pytest.mark.parametrize(("text", "edit"), [
    ("0x40000003.eax-0x10", CpuidEdit(0x40000003, "eax", "-", 0x10)),
    ("0x40000004.eax+8", CpuidEdit(0x40000004, "eax", "+", 8)),
    (" 0x40000004.ebx = 0xffffffff ", CpuidEdit(0x40000004, "ebx", "=", 0xFFFFFFFF)),
])
def test_parse(text: str, edit: CpuidEdit) -> None:
    assert parse_edit(text) == edit
    assert parse_edit(str(edit)) == edit


@pytest.mark.parametrize("text", ["0x1.eax+1", "0x40000003.esi+1", "0x40000003.eax*2", "0x40000003.eax+0x1ffffffff",
                                  "", "eax+1"])
def test_bad_edits_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError, match="CPUID edit"):
        parse_edit(text)


@given(st.text(max_size=40))
def test_parse_never_raises_anything_else(text: str) -> None:
    with contextlib.suppress(ConfigError):
        parse_edit(text)


def test_edits_apply_after_synthesis() -> None:
    base = load_config(preset="recommended")
    config = base.replace(cpuid_edits=(parse_edit("0x40000003.eax-0x10"), parse_edit("0x40000004.ebx=0x20"),
                                       parse_edit("0x40000004.eax+0x1")))
    a, b = hv_leaves(base), hv_leaves(config)
    assert b[0x40000003].eax == a[0x40000003].eax & ~0x10
    assert b[0x40000004].ebx == 0x20 and b[0x40000004].eax == a[0x40000004].eax | 1
    assert any(row[0] == "cpuid edit" for row in config.describe())


def test_gating_follows_the_edited_privilege() -> None:
    """AccessIntrCtrlRegs cleared: HV_X64_MSR_EOI #GPs though hv-vapic is on (UseApicMsrs still recommended)."""
    config = load_config(preset="recommended").replace(cpuid_edits=(parse_edit("0x40000003.eax-0x10"),))
    part = Partition(config, BytesMemory(1 << 20))
    assert part.offer.recommendation_mask & 0x8
    assert isinstance(part.vps[0].wrmsr(0x40000073, 0x1001), Fault)
    assert isinstance(part.vps[0].rdmsr(0x40000070), Fault)
