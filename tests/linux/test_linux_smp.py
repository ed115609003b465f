"""Debian's 6.1 cloud kernel on 2 and 4 vCPUs (issue 7, item 2): the boot CPU starts every application processor
with INIT-SIPI-SIPI (its real-mode trampoline below 1 MiB, SDM vol. 3 §8.4.4), and each AP runs with the Hyper-V
enlightenments: its own VP index, VP assist page (EOIs through the assist page or the EOI MSR), x2APIC, a direct-
mode synthetic timer as its clockevent, IPIs by hypercall; with the test initramfs, user space runs a thread on
every CPU and the kernel flushes remote TLBs by hypercall.

Skipped with the reason when the kernel package cannot be fetched (no apt, no network; the user-space test also
when the initramfs cannot be built). The bring-up boots stop 20 ms after the kernel logs "smpboot: Total of N
processors activated" (0.5-0.7 s of guest time, 20-40 s wall each here); the user-space boot runs to /init's exit
(~2.3 s of guest time, 50-60 s wall).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from viridian.config.presets import load_config
from viridian.machine.linux_machine import DEFAULT_APPEND, linux_machine
from viridian.tlfs.msrs import HvMsr

LIMIT_TICKS = 3_000_000_000  # a safety net: bring-up ends at ~1.0e9 (2 vCPUs) / ~1.3e9 (4 vCPUs) today
AFTER_TICKS = 40_000_000  # 20 ms more: every AP's timer ticks
HVCALL_SEND_IPI = 0x000B


def _stop_after(machine: Any, text: str, ticks: int) -> None:
    """End the run (status "timeout") ``ticks`` of guest time after the serial log shows ``text``."""
    serial = machine.ports.serial
    needle, transmit = text.encode(), serial.transmit

    def watch(data: bytes) -> None:  # every byte of output passes here (ports.Serial16550, vcpu_io.py)
        transmit(data)
        if b"\n" in data and machine.max_ticks == LIMIT_TICKS and needle in serial.output[-(200 + len(data)):]:
            machine.max_ticks = machine.clock.tsc() + ticks

    serial.transmit = watch  # type: ignore[method-assign]


@pytest.fixture(scope="module", params=[2, 4], ids=["2vcpus", "4vcpus"])
def booted(request: pytest.FixtureRequest, kernel: str) -> tuple[Any, str, int]:
    vcpus = request.param
    m = linux_machine(load_config(preset="linux"), kernel, vcpus=vcpus, append=DEFAULT_APPEND,
                      max_ticks=LIMIT_TICKS)
    _stop_after(m, f"smpboot: Total of {vcpus} processors activated", AFTER_TICKS)
    result = m.run()
    log = m.ports.serial.text()
    assert result.status == "timeout" and m.clock.tsc() < LIMIT_TICKS, (result, log[-3000:])
    return m, log, vcpus


def test_every_cpu_is_brought_up(booted: tuple[Any, str, int]) -> None:
    m, log, vcpus = booted
    assert f"smpboot: Allowing {vcpus} CPUs, 0 hotplug CPUs" in log
    assert f"smp: Brought up 1 node, {vcpus} CPUs" in log, log[-3000:]
    assert f"smpboot: Total of {vcpus} processors activated" in log
    for bad in ("BUG:", "Oops", "WARNING:", "Call Trace", "not responding", "failed to come online"):
        assert bad not in log, log[log.find(bad) - 2000 : log.find(bad) + 2000]
    for v in m.vcpus[1:]:
        assert v.stats.events["init"] == 1 and v.stats.events["sipi_start"] == 1, v.index  # one start each


def test_every_ap_runs_enlightened(booted: tuple[Any, str, int]) -> None:
    """The per-CPU part of hyperv_init (hv_cpu_init) and of the stimer clockevent ran on every AP."""
    m, log, _vcpus = booted
    assert "Hyper-V: Using IPI hypercalls" in log and "Hyper-V: Using enlightened APIC (x2apic mode)" in log
    for v in m.vcpus:
        i = v.index
        assert v.stats.msr_reads[HvMsr.VP_INDEX] >= 1, i  # hv_cpu_init: its own VP index
        assert m.partition.vps[i].vp_assist_msr & 1, i  # the VP assist page enabled on this VP
        assert m.apics[i].x2apic, i  # x2APIC mode on every CPU
        timer = m.partition.vps[i].synic.timers[0]
        assert timer.direct, i  # stimer0 in direct mode: this CPU's clockevent (hv_stimer_init)
        assert timer.fired > 0, i  # ... and it has ticked on this CPU
        assert v.stats.msr_writes[HvMsr.STIMER0_CONFIG] >= 1, i
        assert v.stats.interrupts_delivered > 0, i
    assert sum(v.stats.hypercalls[HVCALL_SEND_IPI] for v in m.vcpus[1:]) > 0  # APs send IPIs by hypercall


def test_tsc_is_one_clock_for_every_cpu(booted: tuple[Any, str, int]) -> None:
    """One virtual TSC for the partition: no CPU's TSC is out of sync with the boot CPU's (Linux checks when
    the TSC is trusted; on Hyper-V without TSC-invariant controls it uses the reference TSC page instead)."""
    m, log, _vcpus = booted
    assert "TSC synchronization" not in log and "TSC warp" not in log
    assert "clocksource: hyperv_clocksource_tsc_page" in log
    offsets = {m.arch[v.index].guest_tsc() - m.clock.tsc() for v in m.vcpus}
    assert offsets == {0}, offsets


# ---- user space on 4 vCPUs: the test initramfs (fixtures/initramfs) runs one workload thread per CPU ----

ROOT = Path(__file__).resolve().parents[2]
INIT_TICKS = 12_000_000_000  # /init starts at ~2.2 s of guest time, its workload takes ~10 ms
HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST = 0x0003


@pytest.fixture(scope="module")
def initramfs() -> Path:
    proc = subprocess.run(["make", "-s", "-C", str(ROOT / "fixtures"), "initramfs"], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"initramfs not built: {(proc.stderr or proc.stdout).strip()[-300:]}")
    return ROOT / "fixtures" / "build" / "initramfs.cpio"


def test_user_space_threads_on_4_vcpus_flush_by_hypercall(kernel: str, initramfs: Path) -> None:
    """/init's threads run pinned to each of the 4 CPUs (mmap/mprotect/munmap, futexes): the kernel's remote TLB
    flushes go to several VPs in one HvCallFlushVirtualAddressList (TLFS §9) and
    cross-CPU text patching and code written by one vCPU stay coherent (the workload checks its results)."""
    m = linux_machine(load_config(preset="linux"), kernel, initrd=initramfs, vcpus=4,
                      append="console=ttyS0 panic=-1 nokaslr viridian.iters=20", max_ticks=INIT_TICKS)
    result = m.run()
    log = m.ports.serial.text()
    assert (result.status, result.code) == ("exit", 0), (result, log[-3000:])
    assert "viridian-init: online cpus: 4 (0-3)" in log
    done = [ln for ln in log.splitlines() if "viridian-init: workload done" in ln]
    assert done and done[0].endswith(" ok") and "threads=4 " in done[0], done
    assert "viridian-init: workload threads ended on cpus: 0,1,2,3" in log
    for i in range(4):
        assert f"viridian-init: clockevent{i} current_device: Hyper-V clockevent" in log
    flushes = [v.stats.hypercalls[HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST] for v in m.vcpus]
    assert all(flushes), flushes  # every CPU shot down the others' TLBs by hypercall
    assert m.flushes > sum(flushes), (m.flushes, flushes)  # ... several VPs per call
