"""HV_X64_MSR_EOI / ICR / TPR / VP_ASSIST_PAGE against real local APIC models."""

from __future__ import annotations

import pytest
from assist_harness import MEM, PAGE, PAGE_GPA, enable_page, make, word

from msr.faults import Fault
from viridian.tlfs.msrs import HvMsr

APIC_MSRS = (HvMsr.EOI, HvMsr.ICR, HvMsr.TPR)


def is_gp(result: object) -> bool:
    return isinstance(result, Fault) and result.vector == 13


@pytest.mark.parametrize("index", [*APIC_MSRS, HvMsr.VP_ASSIST_PAGE])
def test_not_offered_without_hv_vapic(index: int) -> None:
    w = make("hv-relaxed,hv-vpindex")
    assert is_gp(w.vp().wrmsr(index, 0))
    assert is_gp(w.vp().rdmsr(index))


@pytest.mark.parametrize("index", APIC_MSRS)
def test_no_local_apic_means_gp(index: int) -> None:
    w = make(apics=False)
    assert is_gp(w.vp().wrmsr(index, 0))
    if index != HvMsr.EOI:
        assert is_gp(w.vp().rdmsr(index))
    # the assist page itself still works (it also carries non-APIC fields)
    assert w.vp().wrmsr(HvMsr.VP_ASSIST_PAGE, PAGE) is None and w.vp().rdmsr(HvMsr.VP_ASSIST_PAGE) == PAGE


def test_eoi_is_write_only_and_retires_the_highest_isr() -> None:
    w = make()
    apic = w.apic()
    for vector in (0x40, 0x80):
        apic.assert_interrupt(vector)
        apic.acknowledge()
    assert is_gp(w.vp().rdmsr(HvMsr.EOI))
    assert is_gp(w.vp().wrmsr(HvMsr.EOI, 1 << 32))  # 63:32 RsvdZ -> #GP (KVM)
    assert apic.isr_vectors() == [0x40, 0x80]
    assert w.vp().wrmsr(HvMsr.EOI, 0xFFFF_FFFF) is None  # the EOI value is ignored
    assert apic.isr_vectors() == [0x40]


def test_tpr() -> None:
    w = make()
    assert w.vp().wrmsr(HvMsr.TPR, 0x5F) is None
    assert w.apic().get_tpr() == 0x5F and w.vp().rdmsr(HvMsr.TPR) == 0x5F
    assert w.vp().wrmsr(HvMsr.TPR, 0xAB20) is None  # 31:8 dropped like KVM's APIC
    assert w.vp().rdmsr(HvMsr.TPR) == 0x20
    assert is_gp(w.vp().wrmsr(HvMsr.TPR, 1 << 32))
    assert w.vp().rdmsr(HvMsr.TPR) == 0x20


def test_icr_sends_an_ipi_and_reads_back() -> None:
    w = make()
    icr = (1 << 56) | 0x45  # xAPIC: destination APIC ID 1 in 63:56, fixed, vector 0x45
    assert w.vp().wrmsr(HvMsr.ICR, icr) is None
    assert w.apic(1).irr_vectors() == [0x45] and w.apic(0).irr_vectors() == []
    assert w.vp().rdmsr(HvMsr.ICR) == icr


def test_icr_self_ipi_arrives_at_the_sender() -> None:
    w = make()
    assert w.vp(1).wrmsr(HvMsr.ICR, (1 << 18) | 0x66) is None  # shorthand SELF
    assert w.apic(1).irr_vectors() == [0x66]


def test_vp_assist_page_enable_zeroes_only_the_apic_assist_word() -> None:
    w = make()
    w.memory.write(PAGE_GPA, b"\xff" * 16)
    assert w.vp().wrmsr(HvMsr.VP_ASSIST_PAGE, PAGE | 0xFFE) is None  # 11:1 RsvdP
    assert w.vp().rdmsr(HvMsr.VP_ASSIST_PAGE) == PAGE  # reserved bits read back as the hypervisor's 0
    assert word(w) == 0 and w.memory.read(PAGE_GPA + 4, 12) == b"\xff" * 12


def test_vp_assist_page_pfn_outside_ram() -> None:
    w = make()
    enable_page(w)
    assert is_gp(w.vp().wrmsr(HvMsr.VP_ASSIST_PAGE, MEM | 1))  # KVM: bad GPA -> #GP
    assert is_gp(w.vp().wrmsr(HvMsr.VP_ASSIST_PAGE, (1 << 64) - 0x1000 | 1))
    assert w.vp().rdmsr(HvMsr.VP_ASSIST_PAGE) == PAGE  # unchanged
    assert w.vp().wrmsr(HvMsr.VP_ASSIST_PAGE, MEM) is None  # disabled: any PFN is fine
    assert w.vp().rdmsr(HvMsr.VP_ASSIST_PAGE) == MEM


def test_vp_assist_page_is_per_vp_and_reset() -> None:
    w = make()
    enable_page(w, 1)
    assert w.vp(0).rdmsr(HvMsr.VP_ASSIST_PAGE) == 0
    w.vp(1).reset()
    assert w.vp(1).rdmsr(HvMsr.VP_ASSIST_PAGE) == 0
