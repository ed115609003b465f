"""style="qemu": leaves must equal what QEMU/KVM give the guest.

Expected values are derived by hand from QEMU target/i386/kvm/kvm.c (kvm_hyperv_properties[] and
hyperv_fill_cpuids) and cpu.c defaults, written here as literal integers -- never computed by the code
under test. ``expected()`` below is an independent transcription of those rules used for the random test;
the explicit cases check it and the model against hand-computed numbers.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from viridian.config import get_preset, parse_qemu
from viridian.partition.cpuid import hv_leaves

Regs = tuple[int, int, int, int]
L0, L1, L2, L3, L4, L5, LA = (0x40000000, 0x40000001, 0x40000002, 0x40000003, 0x40000004, 0x40000005,
                              0x4000000A)
MS_HV = (0x7263694D, 0x666F736F, 0x76482074)  # "Micr" "osof" "t Hv"
HV1 = 0x31237648  # "Hv#1"

# kvm_hyperv_properties transcribed: flag -> {(leaf, register index 0..3): bits}. EBX of 0x40000003 for
# hv-synic comes from hyperv_fill_cpuids (PostMessages | SignalEvents); the eVMCS version 0x0101 from
# hv_build_cpuid_leaf. hv-guest-idle is our extension (AccessGuestIdleReg EAX10 + GuestIdleState EDX5).
TABLE: dict[str, dict[tuple[int, int], int]] = {
    "hv-relaxed": {(L4, 0): 0x20},
    "hv-vapic": {(L3, 0): 0x10},
    "hv-time": {(L3, 0): 0x202},
    "hv-crash": {(L3, 3): 0x400},
    "hv-reset": {(L3, 0): 0x80},
    "hv-vpindex": {(L3, 0): 0x40},
    "hv-runtime": {(L3, 0): 0x1},
    "hv-synic": {(L3, 0): 0x4, (L3, 1): 0x30},
    "hv-stimer": {(L3, 0): 0x8},
    "hv-frequencies": {(L3, 0): 0x800, (L3, 3): 0x100},
    "hv-reenlightenment": {(L3, 0): 0x2000},
    "hv-tlbflush": {(L4, 0): 0x804},
    "hv-evmcs": {(L4, 0): 0x4000, (LA, 0): 0x0101},
    "hv-ipi": {(L4, 0): 0xC00},
    "hv-stimer-direct": {(L3, 3): 0x80000},
    "hv-avic": {(L4, 0): 0x200},
    "hv-emsr-bitmap": {(LA, 0): 0x80000},
    "hv-xmm-input": {(L3, 3): 0x10},
    "hv-tlbflush-ext": {(L3, 3): 0x4000},
    "hv-tlbflush-direct": {(LA, 0): 0x20000},
    "hv-guest-idle": {(L3, 0): 0x400, (L3, 3): 0x20},
}
DEPS = {"hv-stimer": ["hv-time", "hv-synic", "hv-vpindex"], "hv-synic": ["hv-vpindex"], "hv-tlbflush": ["hv-vpindex"],
        "hv-ipi": ["hv-vpindex"], "hv-evmcs": ["hv-vapic"], "hv-stimer-direct": ["hv-stimer", "hv-time", "hv-synic",
        "hv-vpindex"], "hv-tlbflush-ext": ["hv-tlbflush", "hv-vpindex"], "hv-tlbflush-direct": ["hv-vapic"]}


def expected(flags: set[str], spinlocks: int = 0xFFFFFFFF, coresharing: str = "off") -> dict[int, Regs]:
    """QEMU hyperv_fill_cpuids, transcribed with literal bits (default identity values)."""
    acc: dict[tuple[int, int], int] = {}
    for flag in flags:
        for key, bits in TABLE[flag].items():
            acc[key] = acc.get(key, 0) | bits
    leaves = {leaf: (0, 0, 0, 0) for leaf in range(L0, LA + 1)}
    if not flags and spinlocks == 0xFFFFFFFF:
        return leaves  # hyperv_enabled() false: no Hyper-V leaves
    nested = acc.get((LA, 0), 0)
    leaves[L0] = (LA if nested else L5, *MS_HV)
    leaves[L1] = (HV1, 0, 0, 0)
    leaves[L2] = (0x3839, 0x000A0000, 0, 0)
    leaves[L3] = (acc.get((L3, 0), 0) | 0x20, acc.get((L3, 1), 0), 0, acc.get((L3, 3), 0) | 0x8)
    rec = acc.get((L4, 0), 0)
    if "hv-vapic" in flags and "hv-avic" not in flags:
        rec |= 0x8
    if coresharing != "off":
        rec |= 0x40000
    leaves[L4] = (rec, spinlocks, 0, 0)
    leaves[L5] = (0xFFFFFFFF, 64, 0, 0)
    if nested:
        leaves[LA] = (nested, 0, 0, 0)
    return leaves


def actual(flags: str, guest_os_id: int = 0) -> dict[int, Regs]:
    return {k: (r.eax, r.ebx, r.ecx, r.edx) for k, r in hv_leaves(parse_qemu(flags), guest_os_id).items()}


def zero(*leaves: int) -> dict[int, Regs]:
    return {leaf: (0, 0, 0, 0) for leaf in leaves}


# (flags, {leaf: regs} for the leaves that matter; every other leaf of 0x40000006-9 must be zero)
EXPLICIT: list[tuple[str, dict[int, Regs]]] = [
    ("hv-relaxed,hv-vapic,hv-spinlocks=0x1fff", {
        L0: (0x40000005, *MS_HV), L1: (HV1, 0, 0, 0), L2: (0x3839, 0xA0000, 0, 0), L3: (0x30, 0, 0, 0x8),
        L4: (0x28, 0x1FFF, 0, 0), L5: (0xFFFFFFFF, 0x40, 0, 0), LA: (0, 0, 0, 0)}),
    ("hv-relaxed", {L3: (0x20, 0, 0, 0x8), L4: (0x20, 0xFFFFFFFF, 0, 0)}),
    ("hv-spinlocks=0x1fff", {L0: (0x40000005, *MS_HV), L3: (0x20, 0, 0, 0x8), L4: (0, 0x1FFF, 0, 0)}),
    ("hv-time", {L3: (0x222, 0, 0, 0x8)}),
    ("hv-vpindex,hv-synic", {L3: (0x64, 0x30, 0, 0x8)}),
    ("hv-frequencies", {L3: (0x820, 0, 0, 0x108)}),
    ("hv-crash,hv-reset,hv-runtime", {L3: (0xA1, 0, 0, 0x408)}),
    ("hv-vapic,hv-avic", {L3: (0x30, 0, 0, 0x8), L4: (0x200, 0xFFFFFFFF, 0, 0)}),
    ("hv-vpindex,hv-tlbflush", {L4: (0x804, 0xFFFFFFFF, 0, 0)}),
    ("hv-vpindex,hv-ipi", {L4: (0xC00, 0xFFFFFFFF, 0, 0)}),
    ("hv-vpindex,hv-tlbflush,hv-tlbflush-ext,hv-xmm-input", {L3: (0x60, 0, 0, 0x4018)}),
    ("hv-vpindex,hv-vapic,hv-evmcs", {L0: (0x4000000A, *MS_HV), L3: (0x70, 0, 0, 0x8), L4: (0x4008, 0xFFFFFFFF, 0, 0),
                                      LA: (0x0101, 0, 0, 0)}),
    ("hv-vapic,hv-tlbflush-direct", {L0: (0x4000000A, *MS_HV), LA: (0x20000, 0, 0, 0)}),
    ("hv-emsr-bitmap", {L0: (0x4000000A, *MS_HV), L3: (0x20, 0, 0, 0x8), L4: (0, 0xFFFFFFFF, 0, 0),
                        LA: (0x80000, 0, 0, 0)}),
    ("hv-relaxed,hv-no-nonarch-coresharing=on", {L4: (0x40020, 0xFFFFFFFF, 0, 0)}),
    ("hv-relaxed,hv-no-nonarch-coresharing=auto", {L4: (0x40020, 0xFFFFFFFF, 0, 0)}),
    ("hv-guest-idle", {L3: (0x420, 0, 0, 0x28)}),
    ("hv-relaxed,hv-version-id-build=0x1bbc,hv-version-id-major=6,hv-version-id-minor=1,hv-version-id-spack=2,"
     "hv-version-id-sbranch=3,hv-version-id-snumber=0x1234567", {L2: (0x1BBC, 0x00060001, 2, 0x03234567)}),
    ("hv-relaxed,x-hv-max-vps=0x40", {L5: (0x40, 0x40, 0, 0)}),
    ("hv-relaxed,hv-vendor-id=KVMKVMKVM", {L0: (0x40000005, 0x4B4D564B, 0x564B4D56, 0x0000004D)}),
    # libvirt's usual Windows set
    ("hv-relaxed,hv-vapic,hv-spinlocks=0x1fff,hv-vpindex,hv-runtime,hv-synic,hv-stimer,hv-reset,hv-frequencies,"
     "hv-reenlightenment,hv-tlbflush,hv-ipi,hv-time", {
        L0: (0x40000005, *MS_HV), L3: (0x2AFF, 0x30, 0, 0x108), L4: (0xC2C, 0x1FFF, 0, 0)}),
    # hv-passthrough on the reference KVM host: vendor "Linux KVM Hv", spinlocks 0xfff, KVM_MAX_VCPUS 1024
    ("hv-passthrough", {
        L0: (0x4000000A, 0x756E694C, 0x564B2078, 0x7648204D), L1: (HV1, 0, 0, 0), L2: (0x3839, 0xA0000, 0, 0),
        L3: (0x2AFF, 0x30, 0, 0x84518), L4: (0x4E24, 0xFFF, 0, 0), L5: (0x400, 0x40, 0, 0),
        **zero(0x40000006, 0x40000007, 0x40000008, 0x40000009), LA: (0xA0101, 0, 0, 0)}),
]


@pytest.mark.parametrize(("flags", "leaves"), EXPLICIT, ids=[c[0][:70] for c in EXPLICIT])
def test_explicit_leaves(flags: str, leaves: dict[int, Regs]) -> None:
    got = actual(flags)
    for leaf, regs in leaves.items():
        assert got[leaf] == regs, f"{leaf:#x}"
    for leaf in range(0x40000006, 0x4000000A):
        assert got[leaf] == (0, 0, 0, 0)


@pytest.mark.parametrize("flags", ["", "hv-vendor-id=KVMKVMKVM", "hv-version-id-build=1", "hv-spinlocks=0xffffffff",
                                   "hv-no-nonarch-coresharing=on", "host,kvm=off"])
def test_no_enlightenment_means_no_leaves(flags: str) -> None:
    assert actual(flags) == zero(*range(L0, LA + 1))


def test_guest_os_id_does_not_matter_for_qemu() -> None:
    flags = "hv-relaxed,hv-vapic"
    assert actual(flags, 0) == actual(flags, 0x0001040A00004F7C)


def test_all_leaves_present() -> None:
    assert sorted(hv_leaves(parse_qemu("hv-relaxed"))) == list(range(L0, LA + 1))


@pytest.mark.parametrize("flag", sorted(TABLE))
def test_every_single_flag(flag: str) -> None:
    flags = {flag, *DEPS.get(flag, [])}
    assert actual(",".join(sorted(flags))) == expected(flags)


@pytest.mark.parametrize("flag", sorted(TABLE))
def test_every_flag_on_top_of_the_common_set(flag: str) -> None:
    flags = {"hv-relaxed", "hv-vapic", "hv-vpindex", "hv-time", flag, *DEPS.get(flag, [])}
    assert actual(",".join(sorted(flags)) + ",hv-spinlocks=0x1fff") == expected(flags, 0x1FFF)


def test_recommended_preset() -> None:
    got = {k: (r.eax, r.ebx, r.ecx, r.edx) for k, r in hv_leaves(get_preset("recommended")).items()}
    assert got[L0] == (0x40000005, *MS_HV)
    assert got[L3] == (0x2E7F, 0x30, 0, 0x84538)
    assert got[L4] == (0xC2C, 0xFFF, 0, 0)


def test_all_preset() -> None:
    got = {k: (r.eax, r.ebx, r.ecx, r.edx) for k, r in hv_leaves(get_preset("all")).items()}
    assert got[L0] == (0x4000000A, *MS_HV)
    assert got[L3] == (0x2EFF, 0x30, 0, 0x84538)
    assert got[L4] == (0x44E24, 0xFFF, 0, 0)  # avic drops UseApicMsrs; coresharing=on adds bit 18
    assert got[LA] == (0xA0101, 0, 0, 0)


@settings(derandomize=True, max_examples=300, deadline=None)
@given(st.sets(st.sampled_from(sorted(TABLE))), st.integers(0, 0xFFFFFFFF), st.sampled_from(["on", "off", "auto"]))
def test_random_flag_sets(chosen: set[str], spinlocks: int, coresharing: str) -> None:
    flags = set(chosen)
    for flag in chosen:
        flags.update(DEPS.get(flag, []))
    text = ",".join([*sorted(flags), f"hv-spinlocks={spinlocks:#x}", f"hv-no-nonarch-coresharing={coresharing}"])
    assert actual(text) == expected(flags, spinlocks, coresharing)
