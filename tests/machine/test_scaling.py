"""Issue 19 item 5: the scheduler's cached ready set gives exactly the full scan's answers, and a finished
machine is collectable (ten runs in one process do not keep ten machines' memory)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from viridian.config.presets import load_config
from viridian.machine.loader import load_image
from viridian.machine.machine import Machine
from viridian.machine.ready import ReadySet
from viridian.machine.report import stats_json
from viridian.machine.unicorn.vcpu import Vcpu


def _machine(guests: Path, name: str, vcpus: int, preset: str = "recommended", cmdline: str = "",
             board: str = "minimal") -> Machine:
    kw: dict[str, Any] = {"cmdline": cmdline} if cmdline else {}
    return Machine(load_config(preset=preset), load_image(guests / name), vcpus=vcpus, max_ticks=4_000_000_000,
                   board=board, **kw)


def _full_scan(rs: ReadySet) -> tuple[list[Vcpu], int | None]:
    """What the host computed before the ready set: every vCPU asked, every vCPU's timers polled."""
    m = rs.m
    return [v for v in m.vcpus if v.wants_to_run()], m.next_deadline()


CASES = [  # halts, IPIs, APIC/SynIC timers, INIT-SIPI, spin-wait yields, PC devices (PIT, IOAPIC, 8259A ExtINT)
    ("hello.elf", 16, "recommended", "", "minimal"),
    ("win10.elf", 8, "recommended", "ticks=30 spins=0", "minimal"),
    ("win10.elf", 4, "all", "ticks=20 spins=3", "minimal"),
    ("stimer.elf", 2, "all", "", "minimal"),
    ("ipi.elf", 2, "none", "", "minimal"),
    ("ioapic_smp.elf", 3, "recommended", "", "pc"),
    ("ioapic.elf", 1, "recommended", "", "pc"),
    ("pic_pit.elf", 1, "recommended", "", "pc"),
]


@pytest.mark.parametrize(("name", "vcpus", "preset", "cmdline", "board"), CASES)
def test_ready_set_matches_full_scan_every_quantum(guests: Path, name: str, vcpus: int, preset: str,
                                                   cmdline: str, board: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Each quantum, the cached answer equals a full re-scan done right after it (a fixed point: the scan's
    polls at one time are idempotent), and the run's outcome equals a run that only ever full-scans."""
    cached = ReadySet.scan
    seen: list[tuple[Any, ...]] = []  # (cached, full) per quantum; the host turns an exception into "error"

    def checking(rs: ReadySet) -> tuple[list[Vcpu], int | None]:
        got = cached(rs)
        want = _full_scan(rs)
        awake = sum(1 for v in rs.m.vcpus if not (v.halted or v.idle or v.wait_sipi))
        seen.append(([v.index for v in got[0]], got[1], rs.n_awake, [v.index for v in want[0]], want[1], awake))
        return got

    monkeypatch.setattr(ReadySet, "scan", checking)
    m = _machine(guests, name, vcpus, preset, cmdline, board)
    m.run()
    assert m.result is not None and m.result.status == "exit", m.result
    assert len(seen) >= 2
    assert [q for q in seen if q[:3] != q[3:]] == []  # runnable order, deadline, Host.waiting_for_cpu's count
    monkeypatch.setattr(ReadySet, "scan", _full_scan)
    ref = _machine(guests, name, vcpus, preset, cmdline, board)
    ref.run()
    monkeypatch.setattr(ReadySet, "scan", cached)
    fast = _machine(guests, name, vcpus, preset, cmdline, board)
    fast.run()
    a, b = stats_json(fast), stats_json(ref)
    for s in (a, b):
        s.pop("timing", None)
    assert fast.result is not None and fast.result.status == "exit"
    assert (fast.T, fast.clock.tsc(), fast.ports.serial.text(), a) == (ref.T, ref.clock.tsc(),
                                                                        ref.ports.serial.text(), b)
