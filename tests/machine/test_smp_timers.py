"""SMP scheduling (host.py): a timer armed or re-armed during a run fires at its deadline, and the only runnable
vCPU of a partition runs to the next deadline instead of stopping every quantum.

Lateness is virtual time (ticks), so the bounds are deterministic: the partition clock when the local APIC raises
its timer interrupt minus the deadline. A run stops at the first block start at or after a deadline, so a timer
is raised within one block of it; before the SMP clip, conformance.elf x4 raised two periodic ticks 3,749 and
2,156 ticks late (at the run's next stop), and x1 three up to 4,967 late (a periodic re-arm inside a poll).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from viridian.config.presets import load_config
from viridian.devices.lapic import LocalApic
from viridian.machine.loader import load_image
from viridian.machine.machine import QUANTUM, Machine

ONE_BLOCK = 2_000  # ticks (1 us at 2 GHz): longer than any block of the guest


@pytest.mark.parametrize("vcpus", [1, 4])
def test_apic_timer_interrupts_are_raised_at_their_deadline(guests: Path, vcpus: int,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    late: list[int] = []
    poll = LocalApic.poll

    def timed(apic: LocalApic) -> bool:
        due = apic.next_deadline_tsc()
        raised = poll(apic)
        if raised and due is not None:
            late.append(apic.clock.tsc() - due)
        return raised

    monkeypatch.setattr(LocalApic, "poll", timed)
    m = Machine(load_config(preset="recommended"), load_image(guests / "conformance.elf"), vcpus=vcpus)
    res = m.run()
    assert (res.status, res.code) == ("exit", 0)
    assert len(late) > 40  # the suite's periodic and one-shot APIC timer checks
    assert min(late) >= 0 and max(late) < ONE_BLOCK, sorted(late)[-5:]


def test_a_lone_runnable_vcpu_on_smp_runs_past_the_quantum(guests: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    budgets: list[int] = []
    run_vcpu = Machine.run_vcpu

    def spy(m: Machine, v: object, host_t: int, offset: int, budget: int) -> int:
        budgets.append(budget)
        return run_vcpu(m, v, host_t, offset, budget)  # type: ignore[arg-type]

    monkeypatch.setattr(Machine, "run_vcpu", spy)
    m = Machine(load_config(preset="recommended"), load_image(guests / "conformance.elf"), vcpus=4)
    res = m.run()
    assert (res.status, res.code) == ("exit", 0)
    assert max(budgets) > QUANTUM  # while the APs are parked or halted, the BSP's runs reach the next deadline
