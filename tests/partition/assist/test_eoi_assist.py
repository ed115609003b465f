"""EOI avoidance (TLFS "EOI Assist"): eligibility, publication around runs, lazy EOI, nesting, counters."""

from __future__ import annotations

import pytest
from assist_harness import World, enable_page, guest_eoi, inject, make, run, word

from viridian.partition.apic_assist import ApicAssist
from viridian.tlfs.msrs import HvMsr


def ready(page: bool = True) -> World:
    w = make()
    if page:
        enable_page(w)
    return w


def test_edge_interrupt_skips_its_eoi() -> None:
    w = ready()
    w.apic().assert_interrupt(0x41)
    assert inject(w) == 0x41 and w.vp().assist.candidate == 0x41
    w.vp().before_run()
    assert word(w) == 1 and w.vp().assist.armed == 0x41
    assert guest_eoi(w) == "skipped"
    assert w.apic().isr_vectors() == [0x41]  # not retired yet: the VP is still "running"
    w.vp().after_run()
    assert w.apic().isr_vectors() == [] and word(w) == 0
    assert w.vp().assist.eois_avoided == 1 and w.vp().assist.published == 1


# (description, setup before injection, vector asserted, level, eligible)
ELIGIBILITY = [
    ("edge, nothing else", [], 0x50, False, True),
    ("level-triggered", [], 0x50, True, False),
    ("lower class pending", [0x30], 0x50, False, False),
    ("same class, lower vector pending", [0x50], 0x5A, False, False),
]


@pytest.mark.parametrize(("pending", "vector", "level", "eligible"), [c[1:] for c in ELIGIBILITY],
                         ids=[c[0] for c in ELIGIBILITY])
def test_eligibility(pending: list[int], vector: int, level: bool, eligible: bool) -> None:
    w = ready()
    w.apic().assert_interrupt(vector, level=level)
    for p in pending:
        w.apic().assert_interrupt(p)
    assert inject(w) == vector
    assert (w.vp().assist.candidate == vector) is eligible
    assert run(w, eoi=True) == ("skipped" if eligible else "msr")
    assert w.apic().isr_vectors() == []
    assert w.vp().assist.eois_avoided == int(eligible)


def test_page_disabled_never_publishes() -> None:
    w = ready(page=False)
    w.apic().assert_interrupt(0x41)
    inject(w)
    assert w.vp().assist.candidate is None
    assert run(w, eoi=True) == "msr" and w.vp().assist.eois_avoided == 0


def test_lower_priority_arrival_before_the_run_withdraws_the_bit() -> None:
    w = ready()
    w.apic().assert_interrupt(0x61)
    inject(w)
    w.apic().assert_interrupt(0x31)  # TLFS: a later lower-priority request clears NoEoiRequired
    w.vp().before_run()
    assert word(w) == 0 and w.vp().assist.candidate is None


def test_lower_priority_arrival_between_runs_withdraws_the_bit() -> None:
    w = ready()
    w.apic().assert_interrupt(0x61)
    inject(w)
    assert run(w) is None  # the guest did not EOI yet: the bit is taken back after the run
    assert word(w) == 0 and w.vp().assist.candidate == 0x61
    w.apic().assert_interrupt(0x31)
    assert run(w, eoi=True) == "msr"
    assert w.apic().isr_vectors() == [] and w.apic().irr_vectors() == [0x31]
    assert inject(w) == 0x31  # the EOI exit let the lower one through


def test_same_vector_requested_again_withdraws_the_bit() -> None:
    w = ready()
    w.apic().assert_interrupt(0x50)
    inject(w)
    w.apic().assert_interrupt(0x50)  # pending again while in service: needs the EOI to be delivered
    assert run(w, eoi=True) == "msr"
    assert inject(w) == 0x50


def test_higher_class_pending_does_not_block() -> None:
    w = ready()
    w.apic().assert_interrupt(0x41)
    inject(w)
    w.apic().assert_interrupt(0x91)  # not blocked by 0x41's EOI: it will preempt on its own
    w.vp().before_run()
    assert word(w) == 1


def test_nested_only_the_highest_may_skip() -> None:
    """TLFS: with nested interrupts the EOI is avoided only for the highest one (KVM likewise)."""
    w = ready()
    w.apic().assert_interrupt(0x41)
    inject(w)
    run(w)  # 0x41's handler runs, no EOI yet; the bit is taken back at the exit
    w.apic().assert_interrupt(0x81)
    assert inject(w) == 0x81  # nests over 0x41
    assert w.vp().assist.candidate == 0x81
    assert run(w, eoi=True) == "skipped"  # 0x81's EOI
    assert w.apic().isr_vectors() == [0x41]
    assert run(w, eoi=True) == "msr"  # 0x41's EOI needs the register: only one EOI can be skipped
    assert w.apic().isr_vectors() == [] and w.vp().assist.eois_avoided == 1


def test_nested_with_xen_rule_skips_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ApicAssist, "require_sole_isr", True)
    w = ready()
    w.apic().assert_interrupt(0x41)
    inject(w)
    run(w)
    w.apic().assert_interrupt(0x81)
    inject(w)
    assert w.vp().assist.candidate is None
    assert run(w, eoi=True) == "msr" and run(w, eoi=True) == "msr"
    assert w.apic().isr_vectors() == [] and w.vp().assist.eois_avoided == 0


def test_lazy_eoi_is_retired_before_the_next_injection() -> None:
    w = ready()
    w.apic().assert_interrupt(0x41)
    inject(w)
    w.vp().before_run()
    assert guest_eoi(w) == "skipped"
    w.apic().assert_interrupt(0x31)  # arrives while 0x41 is still (lazily) in service
    assert w.apic().pending_vector() is None  # blocked by the stale ISR bit ...
    assert inject(w) == 0x31  # ... until the injection path retires the skipped EOI first
    assert w.apic().isr_vectors() == [0x31] and w.vp().assist.eois_avoided == 1


def test_injection_before_settling_is_a_host_bug() -> None:
    w = ready()
    w.apic().assert_interrupt(0x41)
    inject(w)
    w.vp().before_run()
    with pytest.raises(RuntimeError):
        w.vp().assist.on_inject(0x41)


def test_conventional_eoi_while_published_takes_the_bit_back() -> None:
    w = ready()
    w.apic().assert_interrupt(0x41)
    inject(w)
    w.vp().before_run()
    assert w.vp().wrmsr(HvMsr.EOI, 0) is None  # a guest that ignores the assist page
    assert word(w) == 0 and w.apic().isr_vectors() == []
    w.vp().after_run()
    assert w.apic().isr_vectors() == [] and w.vp().assist.eois_avoided == 0


def test_x2apic_style_eoi_elsewhere_drops_the_candidate() -> None:
    w = ready()
    w.apic().assert_interrupt(0x41)
    inject(w)
    w.apic().eoi()  # EOI through the APIC itself (x2APIC MSR / MMIO), not the Hyper-V MSR
    w.vp().before_run()
    assert word(w) == 0 and w.vp().assist.candidate is None


def test_disabling_the_page_while_published_settles_first() -> None:
    w = ready()
    w.apic().assert_interrupt(0x41)
    inject(w)
    w.vp().before_run()
    assert guest_eoi(w) == "skipped"
    assert w.vp().wrmsr(HvMsr.VP_ASSIST_PAGE, 0) is None  # the skipped EOI is retired first
    assert w.apic().isr_vectors() == [] and w.vp().assist.eois_avoided == 1
    w.vp().after_run()
    assert w.vp().assist.eois_avoided == 1


def test_reset_forgets_everything() -> None:
    w = ready()
    w.apic().assert_interrupt(0x41)
    inject(w)
    w.vp().before_run()
    w.vp().reset()
    assert w.vp().assist.armed is None and w.vp().assist.candidate is None
    w.vp().after_run()
    assert w.vp().assist.eois_avoided == 0


def test_counters_over_many_interrupts() -> None:
    w = ready()
    for i in range(10):
        w.apic().assert_interrupt(0x40 + i, level=i % 3 == 0)
        inject(w)
        run(w, eoi=True)
    assert w.apic().isr_vectors() == []
    assert w.vp().assist.eois_avoided == 6 and w.vp().assist.published == 6


def test_per_vp_pages_are_independent() -> None:
    w = ready()
    enable_page(w, 1)
    w.apic(1).assert_interrupt(0x52)
    inject(w, 1)
    run(w, 1)
    w.vp(1).before_run()
    assert word(w, 1) == 1 and word(w, 0) == 0
