"""style="xen": leaves must equal Xen viridian.c cpuid_viridian_leaves, by hand, as literal integers.

Host assumption (documented in viridian.partition.cpuid): no APIC register virtualization (so
UseApicMsrs is always recommended) and no APIC overlay / MSR bitmap / SLAT in leaf 6.
"""

from __future__ import annotations

import pytest

from viridian.config import get_preset, parse_xen
from viridian.partition.cpuid import hv_leaves

Regs = tuple[int, int, int, int]
L0, L1, L2, L3, L4, L5, L6 = range(0x40000000, 0x40000007)
MS_HV = (0x7263694D, 0x666F736F, 0x76482074)
HV1 = 0x31237648
WS2022 = 0x0001040A00004F7C  # vendor 1 (Microsoft), OS 4 (NT), 10.0 build 20348
WIN7_SP1 = 0x0001040601011DB1  # OS 4, 6.1.7601 SP1
LINUX_6_1 = 0x8100000601000000  # open-source ID: bits 47:40 are 0 -> Xen's "os" field < 4
DOS_LIKE = 0x0001030000000000  # OS field 3
ZERO: Regs = (0, 0, 0, 0)


def leaves(groups: str, guest_os_id: int = 0) -> dict[int, Regs]:
    return {k: (r.eax, r.ebx, r.ecx, r.edx) for k, r in hv_leaves(parse_xen(groups), guest_os_id).items()}


# (groups, guest OS id, expected {leaf: regs})
CASES: list[tuple[str, int, dict[int, Regs]]] = [
    # before the guest writes GUEST_OS_ID, leaves 2 and 4 are empty
    ("base", 0, {L0: (0x40000006, *MS_HV), L1: (HV1, 0, 0, 0), L2: ZERO, L3: (0x70, 0, 0, 0), L4: ZERO, L5: ZERO,
                 L6: ZERO}),
    ("base", WS2022, {L2: (0x1772, 0x00060000, 0, 0), L3: (0x70, 0, 0, 0), L4: (0x28, 0x7FF, 0, 0)}),
    ("base", LINUX_6_1, {L2: (0x1772, 0x00060000, 0, 0), L4: ZERO}),
    ("base", DOS_LIKE, {L4: ZERO}),
    ("base,freq", WS2022, {L3: (0x870, 0, 0, 0)}),
    ("base,time_ref_count", WS2022, {L3: (0x72, 0, 0, 0)}),
    ("base,reference_tsc", WS2022, {L3: (0x270, 0, 0, 0)}),
    ("base,synic", WS2022, {L3: (0x74, 0, 0, 0x20000)}),
    ("base,stimer", WS2022, {L3: (0x7E, 0, 0, 0x20000)}),
    ("base,crash_ctl", WS2022, {L3: (0x70, 0, 0, 0x400)}),
    ("base,cpu_hotplug", WS2022, {L3: (0x70, 0, 0, 0x8)}),
    ("base,apic_assist", WS2022, {L3: (0x70, 0, 0, 0)}),
    ("base,hcall_remote_tlb_flush", WS2022, {L4: (0x2C, 0x7FF, 0, 0)}),
    ("base,hcall_ipi", WS2022, {L4: (0x428, 0x7FF, 0, 0)}),
    ("base,hcall_ipi,ex_processor_masks", WS2022, {L4: (0xC28, 0x7FF, 0, 0)}),
    ("base,no_vp_limit", WS2022, {L5: (0xFFFFFFFF, 0, 0, 0)}),
    ("base,guest_idle", WS2022, {L3: (0x470, 0, 0, 0x20)}),
    ("defaults", 0, {L2: ZERO, L3: (0x872, 0, 0, 0x408), L4: ZERO, L5: (0xFFFFFFFF, 0, 0, 0)}),
    ("defaults", WS2022, {L2: (0x1772, 0x60000, 0, 0), L3: (0x872, 0, 0, 0x408), L4: (0x28, 0x7FF, 0, 0),
                          L5: (0xFFFFFFFF, 0, 0, 0), L6: ZERO}),
    ("all", WS2022, {L0: (0x40000006, *MS_HV), L3: (0xA7E, 0, 0, 0x20408), L4: (0xC2C, 0x7FF, 0, 0),
                     L5: (0xFFFFFFFF, 0, 0, 0)}),
    ('["all", "!freq"]', WS2022, {L3: (0x27E, 0, 0, 0x20408)}),
]


@pytest.mark.parametrize(("groups", "guest_os_id", "expected"), CASES,
                         ids=[f"{c[0]}@{c[1]:#x}" for c in CASES])
def test_xen_leaves(groups: str, guest_os_id: int, expected: dict[int, Regs]) -> None:
    got = leaves(groups, guest_os_id)
    for leaf, regs in expected.items():
        assert got[leaf] == regs, f"{leaf:#x}"
    for leaf in range(0x40000007, 0x4000000B):  # beyond Xen's max leaf 0x40000006
        assert got[leaf] == ZERO


def test_no_groups_means_no_leaves() -> None:
    assert set(leaves("0", WS2022).values()) == {ZERO}


def test_xen_34_preset_reproduces_xen_34() -> None:
    """Xen 3.4 viridian.c: max 0x40000006; leaf 2 = {1, 3<<16|4} once the OS ID is set; leaf 3 EAX
    = APIC access | hypercall | VP index; leaf 4 = MSR-based APIC | relaxed timer, 2047 retries."""
    config = get_preset("xen-3.4")
    before = {k: (r.eax, r.ebx, r.ecx, r.edx) for k, r in hv_leaves(config, 0).items()}
    after = {k: (r.eax, r.ebx, r.ecx, r.edx) for k, r in hv_leaves(config, WIN7_SP1).items()}
    assert before[L0] == after[L0] == (0x40000006, *MS_HV)
    assert before[L1] == (HV1, 0, 0, 0)
    assert before[L2] == ZERO and after[L2] == (1, 0x00030004, 0, 0)
    assert before[L3] == after[L3] == (0x70, 0, 0, 0)
    assert before[L4] == ZERO and after[L4] == (0x28, 2047, 0, 0)
    assert after[L5] == after[L6] == ZERO
