"""``--trace`` events (docs/trace.md): MSR, hypercall, interrupt and EOI detail of real guest runs, and
``--trace-filter``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from viridian.cli.main import main
from viridian.errors import UserError
from viridian.machine.trace import KINDS, msr_label, parse_filter


def _trace(tmp_path: Path, argv: list[str], name: str = "t.jsonl") -> list[dict[str, Any]]:
    out = tmp_path / name
    assert main(["run", *argv, "--trace", str(out), "--quiet"]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.fixture(scope="module")
def win7(guests: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return _trace(tmp_path_factory.mktemp("trace"), [str(guests / "win7.elf"), "--vcpus", "2"])


def test_every_line_has_the_common_fields(win7: list[dict[str, Any]]) -> None:
    for rec in win7:
        assert {"event", "kind", "vcpu", "tsc"} <= rec.keys()
        assert rec["kind"] in KINDS
        assert rec["vcpu"] in (0, 1)


def test_msr_write_guest_os_id(win7: list[dict[str, Any]]) -> None:
    """TLFS §3.6: the guest writes its identity to HV_X64_MSR_GUEST_OS_ID (0x40000000) before anything else;
    the MSR event follows its exit line."""
    i = next(i for i, r in enumerate(win7) if r["event"] == "msr" and r["msr"] == "0x40000000")
    rec = win7[i]
    assert rec["name"] == "HV_X64_MSR_GUEST_OS_ID" and rec["dir"] == "write" and rec["result"] == "ok"
    assert int(rec["value"], 16) >> 48 == 0x0001  # vendor Microsoft, Windows NT (the win7 guest's identity)
    assert win7[i - 1]["event"] == "exit" and win7[i - 1]["reason"] == "msr_write"
    assert win7[i - 1]["insn"].endswith("wrmsr")


def test_msr_read_value(win7: list[dict[str, Any]]) -> None:
    """RDMSR HV_X64_MSR_VP_INDEX returns the vCPU's index (TLFS §7.8.1)."""
    reads = {r["vcpu"]: r["value"] for r in win7 if r["event"] == "msr" and r["msr"] == "0x40000002"}
    assert reads == {0: "0x0", 1: "0x1"}


def test_hypercall_code_status_and_reps(win7: list[dict[str, Any]]) -> None:
    calls = [r for r in win7 if r["event"] == "hypercall"]
    assert calls
    flush = next(r for r in calls if r["name"] == "FLUSH_VIRTUAL_ADDRESS_LIST")
    assert flush["code"] == "0x3" and flush["status"] == "SUCCESS"  # TLFS §3.8 result value
    assert flush["fast"] is False and flush["rep_count"] >= 1 and flush["reps_completed"] == flush["rep_count"]
    assert int(flush["control"], 16) & 0xFFFF == 3


def test_interrupts_are_delivered_and_eoied(win7: list[dict[str, Any]]) -> None:
    """Every APIC interrupt delivered is EOIed once (this guest uses APIC assist and HV_X64_MSR_EOI)."""
    delivered = [(r["vcpu"], r["vector"]) for r in win7 if r["event"] == "interrupt"]
    eoied = [(r["vcpu"], r["vector"]) for r in win7 if r["event"] == "eoi"]
    assert delivered and sorted(delivered) == sorted(eoied)
    assert {r["via"] for r in win7 if r["event"] == "interrupt"} == {"apic"}
    assert {r["via"] for r in win7 if r["event"] == "eoi"} <= {"apic_assist", "hv_eoi_msr"}


# the lab guest's EOI mechanisms (viridian/lab/experiments.py) and how the trace must name them
EOI_PATHS = [
    (["--preset", "none"], "apic=xapic eoi=xapic", "mmio"),
    (["--preset", "none"], "apic=x2apic eoi=x2apic", "x2apic_msr"),
    (["--hv", "hv-vapic"], "apic=xapic eoi=hv", "hv_eoi_msr"),
    (["--hv", "hv-vapic"], "apic=xapic eoi=assist", "apic_assist"),
]


@pytest.mark.parametrize(("offer", "cmdline", "via"), EOI_PATHS)
def test_eoi_path(guests: Path, tmp_path: Path, offer: list[str], cmdline: str, via: str) -> None:
    recs = _trace(tmp_path, [str(guests / "lab.elf"), *offer, "--cmdline", f"exp=eoi n=3 {cmdline}",
                             "--trace-filter", "interrupt,eoi"])
    assert {r["kind"] for r in recs} == {"interrupt", "eoi"}
    ints = [r for r in recs if r["event"] == "interrupt"]
    eois = [r for r in recs if r["event"] == "eoi"]
    assert len(ints) >= 3 and len(eois) == len(ints)
    assert {r["via"] for r in eois} == {via}
    assert [r["vector"] for r in eois] == [r["vector"] for r in ints]


def test_filter_keeps_only_the_kinds_asked(guests: Path, tmp_path: Path) -> None:
    recs = _trace(tmp_path, [str(guests / "win7.elf"), "--vcpus", "2", "--trace-filter", "msr,hypercall"])
    assert recs and {r["kind"] for r in recs} == {"msr", "hypercall"}
    assert any(r["event"] == "exit" and r["reason"] == "msr_read" for r in recs)


def test_trace_does_not_change_the_run(guests: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["run", str(guests / "win7.elf"), "--vcpus", "2", "--json"]
    assert main(argv) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main([*argv, "--trace", str(tmp_path / "t.jsonl")]) == 0
    traced = json.loads(capsys.readouterr().out)
    assert traced["exits"] == plain["exits"] and traced["time"] == plain["time"]


@pytest.mark.parametrize("text", ["msr,bogus", "", ","])
def test_filter_rejects_unknown_kinds(text: str) -> None:
    with pytest.raises(UserError):
        parse_filter(text)


def test_filter_needs_trace(guests: Path) -> None:
    assert main(["run", str(guests / "hello.elf"), "--trace-filter", "msr", "--quiet"]) == 2


def test_extint_and_pic_eoi(guests: Path, tmp_path: Path) -> None:
    """--machine pc: the 8259A's IRQ 0 reaches the BSP as ExtINT (its INTA vector, 0x20 here) and the guest
    ends it with a specific EOI (OCW2, Intel 8259A data sheet) on the master's command port."""
    recs = _trace(tmp_path, [str(guests / "pic_pit.elf"), "--machine", "pc", "--trace-filter", "interrupt,eoi"])
    ext = [r for r in recs if r["event"] == "interrupt" and r["via"] == "extint"]
    pic = [r for r in recs if r["event"] == "eoi" and r["via"] == "pic_ocw2"]
    assert ext and {r["vector"] for r in ext} == {0x20}
    assert len(pic) == len(ext) and {(r["pic"], r["specific"], r["level"]) for r in pic} == {("master", True, 0)}


@pytest.mark.parametrize(("index", "name"), [
    (0x4000_0000, "HV_X64_MSR_GUEST_OS_ID"), (0x4000_0070, "HV_X64_MSR_EOI"), (0x80B, "x2APIC EOI"),
    (0x1B, "IA32_APIC_BASE"), (0x1A0, "IA32_MISC_ENABLE"), (0x200, "IA32_MTRR_PHYSBASE0"),
    (0x213, "IA32_MTRR_PHYSMASK9"), (0x26F, "IA32_MTRR_FIX4K_F8000"), (0x2FF, "IA32_MTRR_DEF_TYPE"),
    (0x40D, "IA32_MC3_STATUS"), (0xC000_0082, "IA32_LSTAR"), (0x1234_5678, None)])
def test_msr_names(index: int, name: str | None) -> None:
    """TLFS names for the synthetic MSRs, SDM vol. 4 table 2-2 names for architectural ones."""
    assert msr_label(index) == name


def test_auto_eoi(guests: Path, tmp_path: Path) -> None:
    """A SynIC SINT with AutoEOI (TLFS "SINTx register", bit 17): the delivery says auto_eoi and its EOI
    (via auto_eoi, at delivery) comes with it; the conformance suite's synic area has such a test."""
    recs = _trace(tmp_path, [str(guests / "conformance.elf"), "--hv", "hv-synic,hv-stimer,hv-vpindex,hv-time",
                             "--cmdline", "only=synic", "--trace-filter", "interrupt,eoi"])
    auto = [i for i, r in enumerate(recs) if r["event"] == "interrupt" and r["auto_eoi"]]
    assert auto
    for i in auto:  # the AutoEOI happens at acknowledge, just before the IDT delivery
        assert recs[i - 1]["event"] == "eoi" and recs[i - 1]["via"] == "auto_eoi"
        assert recs[i - 1]["vector"] == recs[i]["vector"]
    assert all(r["via"] != "unknown" for r in recs if r["event"] == "eoi")


def test_mmio_detail(guests: Path, tmp_path: Path) -> None:
    """xAPIC MMIO (SDM §11.4.1): the timer set-up writes (divide 0x3E0, LVT timer 0x320, initial count 0x380)
    and the EOI register write (0xB0, value 0) each follow their exit, the write line before its EOI."""
    recs = _trace(tmp_path, [str(guests / "lab.elf"), "--preset", "none", "--cmdline",
                             "exp=eoi n=2 apic=xapic eoi=xapic", "--trace-filter", "mmio,eoi"])
    writes = [r for r in recs if r["event"] == "mmio" and r["dir"] == "write"]
    assert {"0x3e0", "0x320", "0x380", "0xb0"} <= {r["reg"] for r in writes}
    assert all(r["gpa"] == hex(0xFEE0_0000 + int(r["reg"], 16)) for r in writes)
    for i, r in enumerate(recs):
        if r["event"] == "mmio":
            assert recs[i - 1]["event"] == "exit" and recs[i - 1]["reason"] == "mmio"
        if r["event"] == "eoi":
            assert recs[i - 1]["event"] == "mmio" and recs[i - 1]["reg"] == "0xb0" and recs[i - 1]["value"] == "0x0"
