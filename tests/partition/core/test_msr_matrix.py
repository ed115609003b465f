"""Every MSR of the core set x (offered / not offered) x (read / write / reserved bits).

Each row: the MSR, a QEMU flag string that offers it, one that does not, and a script of accesses with
the expected answer written out from the TLFS / KVM rules (value read, None = write accepted, "#GP").
"""

from __future__ import annotations

from typing import Any

import pytest

from msr.faults import Fault
from viridian.tlfs.msrs import HvMsr

GP = "#GP"
R, W = "rd", "wr"
M64 = (1 << 64) - 1
OS = 0x8100_0000_0000_0000
CRASH_CTL_SUPPORTED = (1 << 63) | (1 << 62)  # CrashNotify | CrashMessage
REENL = (3 << 32) | (1 << 16) | 0x40  # target VP 3, enabled, vector 0x40

Step = tuple[str, int, Any]

ROWS: list[tuple[str, int, str, str, list[Step]]] = [
    # TLFS §3.6: RW any value, init 0 (gated by AccessHypercallMsrs, set by every HV config).
    ("guest_os_id", HvMsr.GUEST_OS_ID, "hv-relaxed", "",
     [(R, 0, 0), (W, OS, None), (R, 0, OS), (W, M64, None), (R, 0, M64), (W, 0, None), (R, 0, 0)]),
    # TLFS §3.13 / KVM: ignored while GUEST_OS_ID == 0.
    ("hypercall", HvMsr.HYPERCALL, "hv-relaxed", "",
     [(R, 0, 0), (W, 0x5001, None), (R, 0, 0)]),
    # TLFS §7.8.1: VP index of the accessing VP; KVM: write #GP (any value, even the same one).
    ("vp_index", HvMsr.VP_INDEX, "hv-vpindex", "hv-relaxed",
     [(R, 0, 0), (W, 0, GP), (W, 1, GP)]),
    # KVM reads 0; bit 0 = reset; 63:1 RsvdZ -> #GP.
    ("reset", HvMsr.RESET, "hv-reset", "hv-relaxed",
     [(R, 0, 0), (W, 0, None), (W, 2, GP), (W, 3, GP), (W, 1 << 63, GP), (R, 0, 0)]),
    # TLFS §7.8.2: read-only.
    ("vp_runtime", HvMsr.VP_RUNTIME, "hv-runtime", "hv-relaxed",
     [(R, 0, 0), (W, 0, GP), (W, 5, GP)]),
    # TLFS §12.4: read-only, 0 at creation; WRMSR -> #GP.
    ("time_ref_count", HvMsr.TIME_REF_COUNT, "hv-time", "hv-relaxed",
     [(R, 0, 0), (W, 0, GP), (W, 123, GP)]),
    # TLFS §12.7: 11:1 RsvdP (our value, 0, is kept); GPFN outside RAM is accepted (page inaccessible).
    ("reference_tsc", HvMsr.REFERENCE_TSC, "hv-time", "hv-relaxed",
     [(R, 0, 0), (W, 0x1FFE, None), (R, 0, 0x1000), (W, 0x2001, None), (R, 0, 0x2001),
      (W, (0xFFFFF << 12) | 1, None), (R, 0, (0xFFFFF << 12) | 1), (W, 0, None), (R, 0, 0)]),
    # KVM: read-only, AccessFrequencyRegs.
    ("tsc_frequency", HvMsr.TSC_FREQUENCY, "hv-frequencies", "hv-relaxed",
     [(R, 0, 2_000_000_000), (W, 0, GP), (W, 2_000_000_000, GP)]),
    ("apic_frequency", HvMsr.APIC_FREQUENCY, "hv-frequencies", "hv-relaxed",
     [(R, 0, 1_000_000_000), (W, 0, GP)]),
    # TLFS App. C: 7:0 vector, 15:8 RsvdZ, 16 enabled, 31:17 RsvdZ, 63:32 target VP.
    ("reenlightenment_control", HvMsr.REENLIGHTENMENT_CONTROL, "hv-reenlightenment", "hv-relaxed",
     [(R, 0, 0), (W, REENL, None), (R, 0, REENL), (W, REENL | 1 << 8, GP), (W, 1 << 17, GP),
      (W, 1 << 31, GP), (R, 0, REENL), (W, 0, None), (R, 0, 0)]),
    ("tsc_emulation_control", HvMsr.TSC_EMULATION_CONTROL, "hv-reenlightenment", "hv-relaxed",
     [(R, 0, 0), (W, 1, None), (R, 0, 1), (W, 2, GP), (W, 1 << 63, GP), (R, 0, 1), (W, 0, None), (R, 0, 0)]),
    # KVM: the guest may only write 0.
    ("tsc_emulation_status", HvMsr.TSC_EMULATION_STATUS, "hv-reenlightenment", "hv-relaxed",
     [(R, 0, 0), (W, 1, GP), (W, 2, GP), (W, 0, None), (R, 0, 0)]),
    # TLFS crash registers: RW any value, partition-wide.
    *[(f"crash_p{n}", HvMsr.CRASH_P0 + n, "hv-crash", "hv-relaxed",
       [(R, 0, 0), (W, M64, None), (R, 0, M64), (R, 1, M64), (W, 7, None), (R, 1, 7)])
      for n in range(5)],
    # Reads the supported bits; writes without CrashNotify are ignored (KVM: no #GP for other bits).
    ("crash_ctl", HvMsr.CRASH_CTL, "hv-crash", "hv-relaxed",
     [(R, 0, CRASH_CTL_SUPPORTED), (W, 0, None), (W, 1 << 61, None), (R, 0, CRASH_CTL_SUPPORTED)]),
    # TLFS §7 idle: read idles the VP and returns 0; read-only.
    ("guest_idle", HvMsr.GUEST_IDLE, "hv-guest-idle", "hv-relaxed",
     [(R, 0, 0), (W, 0, GP)]),
]


def _run(kit: Any, part: Any, index: int, steps: list[Step]) -> None:
    for i, (op, value, expect) in enumerate(steps):
        got = kit.rd(part, index) if op == R else kit.wr(part, index, value)
        assert got == expect, f"step {i}: {op} {value:#x} -> {got!r}, want {expect!r}"


@pytest.mark.parametrize(("name", "index", "on", "off", "steps"), ROWS, ids=[r[0] for r in ROWS])
def test_offered(kit: Any, name: str, index: int, on: str, off: str, steps: list[Step]) -> None:
    part = kit.world(on).partition
    _run(kit, part, index, steps)


@pytest.mark.parametrize(("name", "index", "on", "off", "steps"), ROWS, ids=[r[0] for r in ROWS])
def test_not_offered(kit: Any, name: str, index: int, on: str, off: str, steps: list[Step]) -> None:
    # KVM enforce_cpuid: every access #GPs, whatever the value.
    part = kit.world(off).partition
    if index != HvMsr.GUEST_OS_ID and part.offer.hv_present:
        kit.set_os_id(part)
    for op, value, _ in steps:
        got = kit.rd(part, index) if op == R else kit.wr(part, index, value)
        assert got == GP, f"{op} {value:#x} -> {got!r}"


def test_vp_index_per_vp(kit: Any) -> None:
    part = kit.world("hv-vpindex", vp_count=4).partition
    assert [kit.rd(part, HvMsr.VP_INDEX, vp) for vp in range(4)] == [0, 1, 2, 3]


def test_vp_runtime_tracks_vp(kit: Any) -> None:
    part = kit.world("hv-runtime").partition
    part.vps[1].runtime_100ns = 12345
    assert (kit.rd(part, HvMsr.VP_RUNTIME, 0), kit.rd(part, HvMsr.VP_RUNTIME, 1)) == (0, 12345)


def test_reset_requests(kit: Any) -> None:
    w = kit.world("hv-reset")
    assert kit.wr(w.partition, HvMsr.RESET, 0, vp=1) is None
    assert w.services.resets == []
    assert kit.wr(w.partition, HvMsr.RESET, 1, vp=1) is None
    assert kit.wr(w.partition, HvMsr.RESET, 3, vp=1) == GP  # RsvdZ: nothing requested
    assert w.services.resets == [1]


def test_guest_idle_parks_the_reader(kit: Any) -> None:
    w = kit.world("hv-guest-idle")
    assert kit.rd(w.partition, HvMsr.GUEST_IDLE, 1) == 0
    assert w.services.idles == [1]


def test_tsc_invariant_control(kit: Any) -> None:
    from viridian.tlfs.cpuid import PartitionPrivilege as P

    part = kit.world("hv-relaxed").partition
    idx = HvMsr.TSC_INVARIANT_CONTROL
    assert (kit.rd(part, idx), kit.wr(part, idx, 1)) == (GP, GP)  # not offered
    kit.grant(part, privileges=P.ACCESS_TSC_INVARIANT_CONTROLS)
    assert part.invariant_tsc_suppressed()
    # KVM: only bit 0; cannot be cleared once set (0 -> 0 is fine).
    steps: list[Step] = [(R, 0, 0), (W, 0, None), (W, 2, GP), (W, 1 << 63, GP), (W, 1, None), (R, 0, 1),
                         (W, 1, None), (W, 0, GP), (W, 3, GP), (R, 0, 1)]
    _run(kit, part, idx, steps)
    assert not part.invariant_tsc_suppressed()


NOT_MODELLED = [
    HvMsr.NPIEP_CONFIG,
    HvMsr.STATS_PARTITION_RETAIL_PAGE, HvMsr.STATS_PARTITION_INTERNAL_PAGE,
    HvMsr.STATS_VP_RETAIL_PAGE, HvMsr.STATS_VP_INTERNAL_PAGE,
    HvMsr.POWER_STATE_TRIGGER_C1, HvMsr.POWER_STATE_TRIGGER_C2, HvMsr.POWER_STATE_TRIGGER_C3,
    HvMsr.POWER_STATE_CONFIG_C1, HvMsr.POWER_STATE_CONFIG_C2, HvMsr.POWER_STATE_CONFIG_C3,
    HvMsr.SYNDBG_CONTROL, HvMsr.SYNDBG_STATUS, HvMsr.SYNDBG_SEND_BUFFER, HvMsr.SYNDBG_RECV_BUFFER,
    HvMsr.SYNDBG_PENDING_BUFFER, HvMsr.SYNDBG_OPTIONS,
    HvMsr.STIME_UNHALTED_TIMER_CONFIG, HvMsr.STIME_UNHALTED_TIMER_COUNT, HvMsr.SIRBP,
]


@pytest.mark.parametrize("index", NOT_MODELLED, ids=[i.name for i in NOT_MODELLED])
def test_not_modelled_msrs_gp_with_reason(kit: Any, index: HvMsr) -> None:
    # Declared explicitly: #GP whether or not a config offers the bit, with the reason in the fault.
    part = kit.world(
        "hv-relaxed,hv-vapic,hv-vpindex,hv-runtime,hv-crash,hv-time,hv-synic,hv-stimer,hv-reset,"
        "hv-frequencies,hv-reenlightenment,hv-guest-idle"
    ).partition
    kit.set_os_id(part)
    assert index in part.msr_table
    for res in (part.vps[0].rdmsr(index), part.vps[0].wrmsr(index, 0)):
        assert isinstance(res, Fault) and res.vector == 13
        assert index.name in res.reason
    kit.grant(part, privileges=(1 << 64) - 1, features=(1 << 32) - 1)  # even if a config offered it
    for res in (part.vps[0].rdmsr(index), part.vps[0].wrmsr(index, 0)):
        assert isinstance(res, Fault) and res.vector == 13
        assert "not" in res.reason or "root" in res.reason
