"""Issue 19 item 5: the scheduler's cached ready set gives exactly the full scan's answers, and 256 vCPUs run a
Windows-style guest within 4 MiB per extra vCPU (nothing kept alive after a run: test_teardown.py)."""

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
from viridian.machine.ready import ReadySet
from viridian.machine.unicorn.vcpu import Vcpu
from viridian.report.run import stats_json


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


PEAK = """
import json, sys
from viridian.config.presets import load_config
from viridian.machine.loader import load_image
from viridian.machine.machine import Machine
from viridian.report.run import stats_json
with Machine(load_config(preset="recommended"), load_image(sys.argv[2]), vcpus=int(sys.argv[1]), mem_mib=256,
             max_ticks=10**12, cmdline="ticks=2 spins=0") as m:
    m.run()
    data = stats_json(m)
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"status": m.result.status, "hypercalls": data["exits"]["by_hypercall"], "hwm_kib": hwm,
                  "serial": m.ports.serial.text()}))
"""


def _peak(guests: Path, vcpus: int) -> dict[str, Any]:
    """A child process (its own address space: VmHWM is its peak RSS) runs win10.elf on ``vcpus`` vCPUs."""
    out = subprocess.run([sys.executable, "-c", PEAK, str(vcpus), str(guests / "win10.elf")], capture_output=True,
                         text=True, check=True, timeout=900).stdout
    return dict(json.loads(out.splitlines()[-1]))


def test_256_vcpus_run_a_windows_style_guest_within_4_mib_per_extra_vcpu(guests: Path) -> None:
    """Issue 19 item 5: win10.elf on 256 vCPUs (IPIs and TLB flushes to VPs beyond 63: the Ex hypercalls, TLFS
    §4 sparse VP sets) ends "exit", and its peak RSS is at most 4 MiB per vCPU above the 1-vCPU run's
    (measured 3.0 MiB, ~2.8 of it each Unicorn instance's own start-up; 3.5 before the scanned-page table
    was put on an anonymous mapping)."""
    one, many = _peak(guests, 1), _peak(guests, 256)
    assert one["status"] == many["status"] == "exit", (one["status"], many["status"])
    assert "vcpus=256/256" in many["serial"] and "ipi=hypercall-ex" in many["serial"]
    assert "tlb=hypercall-ex" in many["serial"] and "ipis=4x255" in many["serial"]
    assert many["hypercalls"].get("0x0014", 0) > 0 and many["hypercalls"].get("0x0015", 0) > 0  # Ex forms
    per_vcpu_mib = (many["hwm_kib"] - one["hwm_kib"]) / 255 / 1024
    assert per_vcpu_mib <= 4.0, per_vcpu_mib
