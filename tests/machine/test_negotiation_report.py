"""The negotiation report on real guests: what each used, what it got, first uses, fall-backs; compare."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from viridian.config.presets import load_config
from viridian.machine.loader import load_image
from viridian.machine.machine import Machine
from viridian.report.run import stats_json


def report(path: Path, vcpus: int = 1, **cfg: Any) -> dict[str, Any]:
    m = Machine(load_config(**cfg), load_image(path), vcpus=vcpus, max_ticks=4_000_000_000)
    m.run()
    return stats_json(m)["negotiation"]


def status(rep: dict[str, Any]) -> dict[str, str]:
    return {r["key"]: r["status"] for r in rep["enlightenments"]}


def test_apic_assist_guest(guests: Path) -> None:
    rep = report(guests / "apic_msrs.elf", preset="recommended")
    st = status(rep)
    assert st["vp_assist"] == st["eoi_avoidance"] == st["hypercall_page"] == "used"
    assert st["apic_msrs"] == "offered, unused" and st["relaxed_timing"] == "advisory"
    assert rep["mechanisms"]["eoi"] == {"xapic_mmio": 0, "x2apic_msr": 0, "hv_msr": 0, "avoided_by_assist": 10}
    assert rep["guest"]["os"].startswith("Microsoft Windows NT 10.0")
    assert [f["key"] for f in rep["fallbacks"]] == ["idle", "timer"]  # HLT and the APIC timer, by its design
    whats = [e["what"] for e in rep["timeline"]]
    assert whats[0] == "WRMSR HV_X64_MSR_GUEST_OS_ID"
    assert whats.index("WRMSR HV_X64_MSR_VP_ASSIST_PAGE") < whats.index("HLT")
    times = [e["tsc"] for e in rep["timeline"]]
    assert times == sorted(times)


def test_not_offered_is_reported_with_what_the_guest_got(guests: Path) -> None:
    """The VP assist page without hv-vapic: the guest's WRMSR gets #GP, reported as used-but-not-offered."""
    rep = report(guests / "apic_msrs.elf", hv="hv-vpindex")
    row = next(r for r in rep["enlightenments"] if r["key"] == "vp_assist")
    assert (row["status"], row["got"]) == ("used, not offered", {"#GP": 1})
    assert rep["summary"]["used, not offered"] == ["vp_assist"]
    assert next(e for e in rep["timeline"] if "VP_ASSIST" in e["what"])["result"] == "#GP"


def test_vp_runtime_probe_is_gp(guests: Path) -> None:
    rep = report(guests / "exceptions.elf", preset="xen-3.4")
    row = next(r for r in rep["enlightenments"] if r["key"] == "vp_runtime")
    assert (row["status"], row["got"]) == ("used, not offered", {"#GP": 1})
    assert next(r for r in rep["enlightenments"] if r["key"] == "vp_index")["got"] == {"#GP": 1}  # the write


@pytest.mark.parametrize(("preset", "reason"), [("none", "not offered"),
                                                ("recommended", "offered and recommended; the guest chose")])
def test_xapic_ipis_are_a_fallback_with_its_reason(guests: Path, preset: str, reason: str) -> None:
    rep = report(guests / "ipi.elf", vcpus=2, preset=preset)
    fb = next(f for f in rep["fallbacks"] if f["key"] == "ipi")
    assert fb["count"] == 9 and fb["reason"].startswith(f"cluster IPI: {reason}")
    assert rep["mechanisms"]["ipi"]["xapic_icr_mmio"] == 9


def test_hypercall_ipis_and_flush(guests: Path) -> None:
    rep = report(guests / "hv_ipi.elf", vcpus=4, preset="recommended")
    st = status(rep)
    assert st["cluster_ipi"] == st["remote_flush"] == "used"
    assert rep["mechanisms"]["ipi"]["cluster_ipi_hypercall"] == 2
    assert rep["mechanisms"]["tlb"]["vcpus_flushed"] > 0


def test_native_spin_wait_calls_are_all_on_record(guests: Path) -> None:
    """The native fast NotifyLongSpinWait path starts only after the first call was recorded in Python."""
    m = Machine(load_config(preset="recommended"), load_image(guests / "loop_hypercall.elf"))
    m.run()
    first = m.neg.first[("hypercall", 8)]
    assert m.neg.outcomes[("hypercall", 8, "SUCCESS")] == 200_000 == m.total_stats().hypercalls[8]
    assert first.result == "SUCCESS" and first.tsc > 0
    assert stats_json(m)["negotiation"]["mechanisms"]["spin"]["notify_long_spin_wait"] == 200_000


def test_stimer_direct_and_synic(guests: Path) -> None:
    rep = report(guests / "stimer.elf", preset="all")
    st = status(rep)
    assert st["synic"] == st["stimers"] == st["stimer_direct"] == "used"


def test_guest_without_hypervisor_leaves(guests: Path) -> None:
    rep = report(guests / "cpuid_probe.elf", preset="none")
    assert [c["leaf"] for c in rep["cpuid_leaves"]][:2] == ["0x1", "0x40000000"]
    assert rep["guest"]["os"] is None and rep["summary"]["used"] == []


def test_cli_run_report_and_compare_json(guests: Path) -> None:
    cli = [sys.executable, "-m", "viridian"]
    out = subprocess.run([*cli, "run", str(guests / "apic_msrs.elf"), "--report", "--quiet"],
                         capture_output=True, text=True, check=True).stdout
    assert "== negotiation report" in out and "VP assist page" in out and "fall-backs observed:" in out
    res = subprocess.run([*cli, "compare", str(guests / "apic_msrs.elf"), "--a", "hv-vpindex", "--b", "recommended",
                          "--json"], capture_output=True, text=True, check=True)
    data = json.loads(res.stdout)
    rows = {r["figure"]: r for r in data["rows"]}
    assert rows["  eoi avoided"]["a"] == 0 and rows["  eoi avoided"]["b"] == 10
    assert {c["key"] for c in data["negotiation"]["changes"]} >= {"vp_assist", "eoi_avoidance"}
    text = subprocess.run([*cli, "compare", str(guests / "ipi.elf"), "--vcpus", "2", "--a", "none", "--b",
                           "recommended"], capture_output=True, text=True, check=True).stdout
    assert "== compare: A = none, B = recommended" in text and "exits per interrupt" in text


@pytest.mark.parametrize("spec", ["nosuch", "xen:bogus", "hv:hv-stimer"])
def test_compare_bad_offer_is_one_line(guests: Path, spec: str) -> None:
    res = subprocess.run([sys.executable, "-m", "viridian", "compare", str(guests / "hello.elf"), "--a", spec,
                          "--b", "none"], capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
