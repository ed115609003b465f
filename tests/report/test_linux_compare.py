"""viridian.lab.linux_compare (make linux-compare): engine-free, on hand-made compare documents."""

from __future__ import annotations

from typing import Any

import pytest

from viridian.lab.linux_compare import check, collect, figures, table


def side(eoi: int = 10, irqs: int = 10, status: str = "exit", code: int | None = 0,
         serial: str = "viridian-init: workload interrupts: LOC+3 RES+1 HVS+2\nviridian-init: exit 0\n") -> dict[str, Any]:
    return {
        "result": {"status": status, "code": code, "detail": ""},
        "serial": serial,
        "exits": {"total": 100, "by_reason": {"io": 60, "mmio": 30, "msr_write": 5, "xsetbv": 5},
                  "by_msr": {"0x000006e0": {"read": 0, "write": 4}}},
        "apic": {"eoi_exits": eoi, "icr_exits": 6, "tpr_exits": 0, "eoi_avoided": irqs - eoi,
                 "interrupts_delivered": irqs, "ipis_sent": 3},
        "negotiation": {"mechanisms": {
            "ipi": {"cluster_ipi_hypercall": 0, "cluster_ipi_ex_hypercall": 0},
            "idle": {"hlt": 7, "guest_idle": 0}, "timer": {"apic_timer_programming": 1, "stimer_msr": 0},
            "tlb": {"flush_hypercall": 0, "flush_ex_hypercall": 0}}},
        "time": {"tsc": 3_000_000, "tsc_hz": 2_000_000_000},
    }


def test_figures() -> None:
    f = figures(side(eoi=5, irqs=20))
    assert f["exits (total)"] == 100
    assert f["  other"] == 5  # "xsetbv" is not one of the listed reasons
    assert f["EOI exits per interrupt"] == 0.25
    assert f["exits per interrupt"] == 5.0
    assert f["IPI exits per IPI"] == 2.0
    assert f["timer: TSC-deadline writes"] == 4
    assert f["timer interrupts in the workload"] == 5  # LOC + HVS
    assert f["virtual time (ms)"] == 1.5
    assert figures(side(irqs=0, eoi=0))["EOI exits per interrupt"] is None


@pytest.mark.parametrize(("kw", "want"), [
    ({}, None),
    ({"status": "timeout", "code": None, "serial": "a\nBUG: kernel NULL pointer dereference\nb\n"},
     "timeout: BUG: kernel NULL pointer dereference"),
    ({"code": 1, "serial": "x\nviridian-init: exit 1\n"}, "exit 1: viridian-init: exit 1"),
    ({"serial": "no exit line\n"}, "exit 0: no exit line"),
])
def test_check(kw: dict[str, Any], want: str | None) -> None:
    assert check(side(**kw)) == want


def test_table_shows_a_failed_offer_and_notes_it() -> None:
    notes: list[str] = []
    pairs = {("none", "recommended"): {"a": side(eoi=10), "b": side(eoi=0)},
             ("xen-3.4", "recommended"): {"a": side(status="timeout", code=None, serial="Oops: 0000\n"),
                                          "b": side(eoi=0)}}
    lines = table(1, collect(pairs, 1, notes), notes)
    row = next(ln for ln in lines if ln.startswith("| APIC exits: EOI "))
    assert row == "| APIC exits: EOI | 10 | - | 0 |  | -100 % |"
    assert notes == ["1 vCPU(s), xen-3.4: timeout: Oops: 0000"]


def test_collect_notes_two_different_runs_of_one_offer() -> None:
    notes: list[str] = []
    collect({("none", "recommended"): {"a": side(), "b": side(eoi=0)},
             ("xen-3.4", "recommended"): {"a": side(), "b": side(eoi=1)}}, 4, notes)
    assert notes == ["4 vCPU(s), recommended: two runs differ (not deterministic)"]


def test_load_reports_missing_empty_and_malformed_documents(tmp_path: Any, capsys: Any) -> None:
    from viridian.lab.linux_compare import main

    (tmp_path / "none-recommended-1.json").write_text("")
    (tmp_path / "xen-3.4-recommended-1.json").write_text('{"a": {"result": 1}, "b": []}')
    assert main(["--load", str(tmp_path), "--vcpus", "1"]) == 1
    out = capsys.readouterr().out
    assert "none vs recommended: not a compare document" in out
    assert "none vs xen-3.4: no " in out
    assert "a malformed compare document" in out
