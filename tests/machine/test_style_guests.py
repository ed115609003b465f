"""The OS-generation "style" guests (fixtures/guests/README.md): one C source, five negotiations.

Each guest prints its decisions as ``decide: key=value`` lines, runs a small workload and exits 0. The
table below is what each style must decide under each preset; it follows from the rules (and sources)
in fixtures/guests/windows/style.c.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from viridian.config.cpuid_edits import parse_edit
from viridian.config.presets import load_config
from viridian.machine.loader import load_image
from viridian.machine.machine import Machine
from viridian.report.run import stats_json

STYLES = ("ws2008", "win7", "win8", "win10", "linux")
PRESETS = ("none", "xen-3.4", "recommended", "all")
LIGHT = "ticks=3 ipis=2 tlb=2 spins=3 idle=2 irql=2"
KEYS = ("apic", "eoi", "ipi", "tlb", "timer", "clock", "idle", "spin", "watchdog", "crash", "irql", "xmm")

BARE = "xapic xapic xapic ipi apic tsc hlt pause"
EXPECTED: dict[tuple[str, str], str] = {
    ("ws2008", "none"): f"{BARE} on none cr8 off",
    ("ws2008", "xen-3.4"): "xapic hv-msr hv-msr ipi apic tsc hlt notify:2047 off none cr8 off",
    ("ws2008", "recommended"): "xapic hv-msr hv-msr hypercall apic tsc hlt notify:4095 off none cr8 off",
    ("ws2008", "all"): "xapic xapic xapic hypercall apic tsc hlt notify:4095 off none cr8 off",
    ("win7", "none"): f"{BARE} on none cr8 off",
    ("win7", "xen-3.4"): "xapic hv-assist hv-msr ipi apic tsc hlt notify:2047 off none cr8 off",
    ("win7", "recommended"):
        "xapic hv-assist hv-msr hypercall apic time-ref-count guest-idle notify:4095 off none cr8 off",
    ("win7", "all"): "xapic xapic xapic hypercall apic time-ref-count guest-idle notify:4095 off none cr8 off",
    ("win8", "none"): f"{BARE} off none cr8 off",
    ("win8", "xen-3.4"): "xapic hv-assist hv-msr ipi apic tsc hlt notify:2047 off none cr8 off",
    ("win8", "recommended"):
        "xapic hv-assist hv-msr hypercall stimer tsc-page guest-idle notify:4095 off none cr8 off",
    ("win8", "all"): "xapic xapic xapic hypercall stimer tsc-page guest-idle notify:4095 off none cr8 off",
    ("win10", "none"): f"{BARE} off none cr8 off",
    ("win10", "xen-3.4"): "xapic hv-assist hv-msr ipi apic tsc hlt notify:2047 off none cr8 off",
    ("win10", "recommended"): "xapic hv-assist hypercall-ex hypercall-ex stimer-direct tsc-page guest-idle "
                              "notify:4095 off msrs cr8 on",
    ("win10", "all"): "xapic xapic hypercall-ex hypercall-ex stimer-direct tsc-page guest-idle notify:4095 off "
                      "msrs cr8 on",
    ("linux", "none"): f"{BARE} on none cli off",
    # Linux reads the hints before writing GUEST_OS_ID; Xen publishes them only after: none seen
    ("linux", "xen-3.4"): "x2apic x2apic x2apic ipi apic tsc hlt pause on none cli off",
    ("linux", "recommended"):
        "x2apic hv-assist hypercall hypercall stimer-direct tsc-page hlt guest-idle on msrs cli off",
    ("linux", "all"): "x2apic x2apic hypercall hypercall stimer-direct tsc-page hlt guest-idle on msrs cli off",
}


def run(guests: Path, style: str, preset: str = "recommended", vcpus: int = 2, cmdline: str = LIGHT,
        edits: tuple[str, ...] = ()) -> dict[str, Any]:
    config = load_config(preset=preset)
    if edits:
        config = config.replace(cpuid_edits=tuple(parse_edit(e) for e in edits))
    m = Machine(config, load_image(guests / f"{style}.elf"), vcpus=vcpus, max_ticks=4_000_000_000,
                cmdline=cmdline)
    m.run()
    return stats_json(m)


def decisions(s: dict[str, Any]) -> dict[str, str]:
    lines = [ln.removeprefix("decide: ") for ln in s["serial"].splitlines() if ln.startswith("decide: ")]
    return dict(ln.split("=", 1) for ln in lines)


def expected(style: str, preset: str) -> dict[str, str]:
    return dict(zip(KEYS, EXPECTED[style, preset].split(), strict=True))


@pytest.mark.parametrize("vcpus", [1, 2])
@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("style", STYLES)
def test_style_decides_and_runs(guests: Path, style: str, preset: str, vcpus: int) -> None:
    s = run(guests, style, preset, vcpus)
    assert (s["result"]["status"], s["result"]["code"]) == ("exit", 0), s["serial"][-400:]
    assert decisions(s) == expected(style, preset)
    assert f"workload: ticks={3 * vcpus} " in s["serial"]
    if vcpus == 2:  # the machine is deterministic and so is the guest
        assert run(guests, style, preset, vcpus)["exits"] == s["exits"]


def test_same_guest_different_offers_different_exits(guests: Path) -> None:
    none, rec = run(guests, "win7", "none"), run(guests, "win7", "recommended")
    assert none["exits"]["total"] != rec["exits"]["total"]
    assert "0x40000070" not in none["exits"]["by_msr"] and rec["apic"]["eoi_avoided"] > 0
    assert none["exits"]["by_reason"]["mmio"] > rec["exits"]["by_reason"]["mmio"]
    assert rec["exits"]["by_hypercall"]["0x0003"] == 2  # tlb=2 shootdowns by HvFlushVirtualAddressList


def test_win10_uses_ex_forms_beyond_64_vps(guests: Path) -> None:
    s = run(guests, "win10", vcpus=70, cmdline="ticks=1 ipis=1 tlb=1 spins=1 idle=1 irql=1")
    assert s["result"]["code"] == 0, s["serial"][-400:]
    assert "vcpus=70/70" in s["serial"]
    assert s["exits"]["by_hypercall"]["0x0014"] == 1 and s["exits"]["by_hypercall"]["0x0015"] >= 1
    assert "0x000b" not in s["exits"]["by_hypercall"]


def test_linux_switches_to_ex_only_beyond_64(guests: Path) -> None:
    s = run(guests, "linux", vcpus=70, cmdline="ticks=1 ipis=1 tlb=1 spins=1 idle=1 irql=1")
    assert s["result"]["code"] == 0, s["serial"][-400:]
    assert decisions(s)["ipi"] == "hypercall-ex" and decisions(s)["tlb"] == "hypercall-ex"
    # broadcasts need the sparse VP set; single-target IPIs to vCPU 0 keep the 64-bit mask form
    assert s["exits"]["by_hypercall"]["0x0015"] >= 1 and s["exits"]["by_hypercall"]["0x000b"] >= 1


def test_old_windows_starts_at_most_64_vps(guests: Path) -> None:
    s = run(guests, "win7", vcpus=66, cmdline="ticks=1 ipis=1 tlb=1 spins=1 idle=1 irql=1")
    assert s["result"]["code"] == 0 and "vcpus=64/66" in s["serial"]


def test_recommendation_without_privilege_is_not_used(guests: Path) -> None:
    s = run(guests, "win7", edits=("0x40000003.eax-0x10",))  # UseApicMsrs without AccessIntrCtrlRegs
    assert s["result"]["code"] == 0
    assert decisions(s)["eoi"] == "xapic" and decisions(s)["ipi"] == "xapic"
    assert not any(k in s["exits"]["by_msr"] for k in ("0x40000070", "0x40000071", "0x40000073"))


@pytest.mark.parametrize(("style", "status", "code"), [("win10", "crash", None), ("win7", "exit", 22)])
def test_bugcheck_path(guests: Path, style: str, status: str, code: int | None) -> None:
    s = run(guests, style, cmdline=LIGHT + " bugcheck=1")
    assert s["result"]["status"] == status
    if code is not None:
        assert s["result"]["code"] == code
    assert "STOP 0x000000e2" in s["serial"]


def test_bad_command_line(guests: Path) -> None:
    s = run(guests, "win7", vcpus=1, cmdline="ticks=3 bogus=1")
    assert (s["result"]["status"], s["result"]["code"]) == ("exit", 18)


CONTENDED = "ticks=2 ipis=2 tlb=2 spins=8 hold=3000 idle=1 irql=1 spinthresh=512"


def test_four_vcpus_contended_lock_windows_notifies(guests: Path) -> None:
    s = run(guests, "win7", vcpus=4, cmdline=CONTENDED)
    assert s["result"]["code"] == 0 and "ipis=2x3 " in s["serial"]
    assert s["exits"]["by_hypercall"]["0x0008"] > 0  # NotifyLongSpinWait after 4095 failed attempts


def test_four_vcpus_contended_lock_linux_sleeps_in_guest_idle(guests: Path) -> None:
    s = run(guests, "linux", vcpus=4, cmdline=CONTENDED)
    assert s["result"]["code"] == 0 and "ipis=2x3 " in s["serial"]
    assert "0x0008" not in s["exits"]["by_hypercall"]  # Linux never notifies
    assert s["exits"]["by_msr"]["0x400000f0"]["read"] > 0 and "pv_waits=0 " not in s["serial"]
