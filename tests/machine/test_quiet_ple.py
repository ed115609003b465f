"""Pause-loop exits counted in C (viridian/machine/unicorn/quiet_ple.py) are used, and only when no yield can happen.

That they change nothing a guest or the stats see is tests/machine/test_fastpath_equivalence.py (``quiet_ple``
forced off, conformance.elf and ioapic_smp.elf on 4 vCPUs); here: the fast path really carries exits on
ioapic_smp.elf (so that comparison is not empty) and stays off where a pause-loop exit must reach the run loop.
(conformance.elf x4 no longer spins natively: a lone runnable vCPU now runs to the next deadline, host.py, and
such a long run has handled an exit in Python before its spin, which keeps the fast path off for the run.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from viridian.config.presets import load_config
from viridian.machine.loader import load_image
from viridian.machine.machine import Machine
from viridian.machine.unicorn import engine_build, quiet_ple


def _run(guest: Path, monkeypatch: pytest.MonkeyPatch, **kw: object) -> tuple[int, int]:
    """(pause-loop exits vn_pause counted, pause-loop exits in the stats) of a 4-vCPU run."""
    native = 0
    collect = quiet_ple.collect

    def counting(v: object) -> None:
        nonlocal native
        native += int(v.native.ple_exits)  # type: ignore[attr-defined]
        collect(v)  # type: ignore[arg-type]

    monkeypatch.setattr(quiet_ple, "collect", counting)
    m = Machine(load_config(preset="recommended"), load_image(guest), vcpus=4, max_ticks=4_000_000_000,
                **kw)  # type: ignore[arg-type]
    m.run()
    assert m.result is not None and m.result.status == "exit"
    return native, sum(v.stats.by_reason["pause"] for v in m.vcpus)


def test_spinning_vcpus_exit_natively_when_every_vcpu_has_a_cpu(guests: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(engine_build.DISABLE_ENV, raising=False)
    native, total = _run(guests / "ioapic_smp.elf", monkeypatch, board="pc")
    assert 0 < native < total  # the first one is the machine's (negotiation first use)


def test_none_when_a_vcpu_may_be_yielded_to(guests: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """2 simulated CPUs for 4 vCPUs: a pause-loop exit may give the CPU away (Machine.yield_vp)."""
    monkeypatch.delenv(engine_build.DISABLE_ENV, raising=False)
    native, total = _run(guests / "conformance.elf", monkeypatch, pcpus=2)
    assert native == 0 and total > 0


def test_forced_off(guests: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(engine_build.DISABLE_ENV, "quiet_ple")
    native, total = _run(guests / "conformance.elf", monkeypatch)
    assert native == 0 and total > 0
