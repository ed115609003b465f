"""How to write your own guest-level test with the viridian pytest plugin (installed with viridian: the
fixtures viridian_run, viridian_asm, viridian_offer and the marker viridian_offers need no conftest)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from viridian.pytest_plugin import GuestRun

GUEST = r'''
#include "guest.inc"
        .text
        .globl guest_main
guest_main:
        PARK_IF_NOT_BSP
        mov ecx, 0x40000002             /* HV_X64_MSR_VP_INDEX */
        rdmsr
        PRINT "vp index "
        PRINT_DEC rax
        PRINT "\n"
        xor eax, eax
        ret
'''


@pytest.mark.viridian_offers("recommended", "hv:hv-vpindex", "xen:base")
def test_vp_index_reads_zero_on_vcpu0(viridian_asm: Callable[..., Path], viridian_run: Callable[..., GuestRun],
                                      viridian_offer: str) -> None:
    image = viridian_asm(GUEST, name="vp_index")
    run = viridian_run(image, offer=viridian_offer, vcpus=2)
    assert run.ok, run.detail
    assert "vp index 0" in run.serial
    assert run.negotiation["enlightenments"][1]["status"] == "used"


def test_a_fixture_guest_by_name(viridian_run: Callable[..., GuestRun]) -> None:
    run = viridian_run("win7", offer="recommended", vcpus=2, cmdline="ticks=2 ipis=1 tlb=1 spins=2 idle=1")
    assert run.ok
    assert "guest_idle" in run.negotiation["summary"]["used"]
