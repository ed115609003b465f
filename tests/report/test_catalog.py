"""The negotiation report's catalogue and recorder, engine-free: offered/recommended decoded from the real
leaves of each preset, and the log's memory bound."""

from __future__ import annotations

import pytest

from viridian.config.presets import load_config
from viridian.machine.negotiation import MAX_DISTINCT, NegotiationLog
from viridian.partition.cpuid import Offer, hv_leaves
from viridian.report.catalog import BY_KEY, CATALOG, msr_name

# (preset, key) -> (offered, recommended); recommended None = the TLFS has no recommendation bit
EXPECT = [
    ("none", "hypercall_page", False, None),
    ("none", "apic_msrs", False, False),
    ("xen-3.4", "hypercall_page", True, None),
    ("xen-3.4", "apic_msrs", True, False),  # Xen: 0x40000004 is empty until GUEST_OS_ID is set
    ("xen-3.4", "reference_tsc", False, None),
    ("recommended", "apic_msrs", True, True),
    ("recommended", "vp_assist", True, None),
    ("recommended", "spin_notify", True, True),
    ("recommended", "cluster_ipi", True, True),
    ("recommended", "stimer_direct", True, None),
    ("recommended", "reset", False, False),
    ("all", "reset", True, False),
    ("all", "crash", True, None),
]


@pytest.mark.parametrize(("preset", "key", "offered", "recommended"), EXPECT)
def test_offer_decoding(preset: str, key: str, offered: bool, recommended: bool | None) -> None:
    offer = Offer.from_leaves(hv_leaves(load_config(preset=preset), 0))
    e = BY_KEY[key]
    assert (e.offered(offer), e.recommended(offer)) == (offered, recommended)


def test_xen_recommendations_appear_after_guest_os_id() -> None:
    offer = Offer.from_leaves(hv_leaves(load_config(preset="xen-3.4"), 0x0001040601001DB0))
    assert BY_KEY["apic_msrs"].recommended(offer) is True


def test_catalog_keys_unique_and_cited() -> None:
    assert len({e.key for e in CATALOG}) == len(CATALOG)
    assert all(e.spec for e in CATALOG)


@pytest.mark.parametrize(("index", "name"), [(0x40000070, "HV_X64_MSR_EOI"), (0x80B, "x2APIC EOI"),
                                             (0x1B, "IA32_APIC_BASE"), (0x12345, "MSR 0x12345")])
def test_msr_names(index: int, name: str) -> None:
    assert msr_name(index) == name


def test_log_keeps_first_use_and_outcomes() -> None:
    log = NegotiationLog()
    log.record_msr(1, 50, 0x40000010, False, 0, 13)
    log.record_msr(0, 90, 0x40000010, False, 0, None)
    assert (log.first[("rdmsr", 0x40000010)].vcpu, log.first[("rdmsr", 0x40000010)].result) == (1, "#GP")
    assert log.outcomes[("rdmsr", 0x40000010, "#GP")] == 1
    assert log.record_hypercall(0, 10, 8, "SUCCESS") and not log.record_hypercall(0, 11, 8, "SUCCESS", 5)
    assert log.outcomes[("hypercall", 8, "SUCCESS")] == 6
    log.record_msr(0, 5, 0x40000000, True, 0x1234, None)
    log.record_msr(0, 6, 0x40000000, True, 0x1234, None)
    assert log.os_ids == [(0, 5, 0x1234)]


def test_log_memory_is_bounded_against_a_hostile_guest() -> None:
    """A guest that probes every MSR index cannot grow the log without bound."""
    log = NegotiationLog()
    for i in range(MAX_DISTINCT * 2):
        log.record_msr(0, i, i, bool(i & 1), i, 13)
        log.record_cpuid(0, i, i)
    assert len(log.first) == MAX_DISTINCT and len(log.outcomes) <= MAX_DISTINCT
    assert log.dropped > 0
