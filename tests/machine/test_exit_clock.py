"""The clock rule on the exits the fast engine completes off its usual path (docs/architecture.md: a vCPU's clock
is bytes of completed instructions + EXIT_TICKS per exit, the partition clock brought up to it at each exit):
a page fault Unicorn loses and lost_fault.py recovers by decoding costs one exit like a fault the engine
reports, on both engines; a fast NotifyLongSpinWait completed in C (csrc vn_stub) leaves the partition clock
where the Python path's exit leaves it (loop_hypercall.elf ends at the same partition time on both engines)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import viridian.machine.unicorn.vcpu as fast_vcpu
from viridian.config.presets import load_config
from viridian.machine.backend import EXIT_TICKS
from viridian.machine.loader import load_image
from viridian.machine.machine import Machine

# hostile_arch.elf cases whose one #PF the fast engine loses (tests/machine/test_hostile_arch.py)
LOST_PF = {"x": "XSAVE off the last mapped page", "r": "a write through the read-only TSC-page overlay",
           "c": "CR3 beyond RAM (then #DF, shutdown)"}


@pytest.mark.parametrize("case", sorted(LOST_PF))
def test_a_recovered_page_fault_is_one_exit_with_its_ticks(guests: Path, case: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, int]] = []
    real = fast_vcpu.recover_lost_fault

    def watched(v: Any, rip: int) -> bool:
        ticks, exits = v.ticks, sum(v.stats.by_reason.values())
        done = real(v, rip)
        if done:
            seen.append((v.ticks - ticks, sum(v.stats.by_reason.values()) - exits))
        return done

    monkeypatch.setattr(fast_vcpu, "recover_lost_fault", watched)
    m = Machine(load_config(preset="recommended"), load_image(guests / "hostile_arch.elf"), cmdline=case,
                max_ticks=200_000_000)
    m.run()
    assert m.vcpus[0].stats.events["lost_fault_recovered"] == 1, LOST_PF[case]
    assert seen == [(EXIT_TICKS, 1)], LOST_PF[case]


def _outcomes(argv: list[str]) -> dict[str, Any]:
    """Each engine in its own process (the fast engine's patches are process-wide: diff_side.py)."""
    out = {}
    for engine in ("reference", "unicorn"):
        r = subprocess.run([sys.executable, "-m", "viridian", "run", *argv, "--engine", engine, "--report",
                            "--json", "-q"], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "PYTHONHASHSEED": "0"})
        s = json.loads(r.stdout)
        out[engine] = {"result": s["result"], "time": s["time"], "exits": s["exits"]["by_reason"],
                       "exceptions": s["exits"]["by_exception"], "ticks": [p["ticks"] for p in s["per_vcpu"]]}
    return out


def test_a_lost_page_fault_costs_the_same_on_both_engines(guests: Path) -> None:
    out = _outcomes([str(guests / "hostile_arch.elf"), "--cmdline", "x"])
    assert out["unicorn"]["exceptions"] == {"14": 1}
    assert out["reference"] == out["unicorn"]


def _spin_run(guests: Path) -> dict[str, Any]:
    m = Machine(load_config(preset="recommended"), load_image(guests / "loop_hypercall.elf"),
                max_ticks=2_000_000_000)
    m.run()
    v = m.vcpus[0]
    return {"result": m.result, "tsc": m.clock.tsc(), "ticks": v.ticks, "exits": dict(v.stats.by_reason),
            "spins": v.stats.hypercalls[0x0008], "native": int(v.native.fast_spin_ok)}


def test_a_native_spin_notification_moves_the_partition_clock_as_python_does(
        guests: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    native = _spin_run(guests)
    real = fast_vcpu.Vcpu.set_fast_spin
    # every NotifyLongSpinWait through the Python path (as in a --trace run, or on the reference engine)
    monkeypatch.setattr(fast_vcpu.Vcpu, "set_fast_spin", lambda self, ok: real(self, False))
    python = _spin_run(guests)
    assert (native.pop("native"), python.pop("native")) == (1, 0)
    assert native["spins"] == python["spins"] == 200_000
    assert native == python
