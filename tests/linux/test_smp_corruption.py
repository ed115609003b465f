"""Debian's cloud kernel on exactly 2 vCPUs (issue 19): the boots that a stale PC corrupted.

Before the fix, 6.1.0-50 with the `make linux` command line panicked at ~0.3 s ("stack-protector: Kernel stack
is corrupted in: extract_entropy"): vCPU 1 patched blake2s_compress (text_poke's int3), vCPU 0 took the #BP
in the engine's interrupt hook, and a later stop in the same run kept a stale PC -- the call to blake2s ran
twice (docs/architecture.md, "Engine rules": the RIP-write mark; fixtures/guests/machine/exc_resume.S shows the
mechanism in a second, tests/machine/test_exc_resume.py). The runs are deterministic, so each of these boots
either reproduces the failure every time or never.

Skipped with the reason when the kernel package cannot be fetched or the initramfs cannot be built. Each
boot takes ~2.3 s of guest time (several seconds of CPU, tens of seconds wall on a busy host).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from viridian.config.presets import load_config
from viridian.machine.linux_boot import load_linux
from viridian.machine.linux_machine import DEFAULT_APPEND, linux_machine
from viridian.machine.machine import Machine

ROOT = Path(__file__).resolve().parents[2]
MAKE_LINUX_APPEND = "console=ttyS0 panic=-1 nokaslr viridian.iters=40"  # the Makefile's `linux` target
TICKS = 12_000_000_000  # 6 s of guest time: both boots end by ~2.4 s
CORRUPTION = ("stack-protector", "Kernel stack is corrupted", "BUG:", "Oops", "general protection fault",
              "engine stopped unexpectedly", "invalid opcode")


def _clean(log: str) -> None:
    for bad in CORRUPTION:
        assert bad not in log, log[max(0, log.find(bad) - 2500):log.find(bad) + 1500]


@pytest.fixture(scope="module")
def initramfs() -> Path:
    proc = subprocess.run(["make", "-s", "-C", str(ROOT / "fixtures"), "initramfs"], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"initramfs not built: {(proc.stderr or proc.stdout).strip()[-300:]}")
    return ROOT / "fixtures" / "build" / "initramfs.cpio"


def test_make_linux_on_two_vcpus_reaches_the_init_exit(kernel: str, initramfs: Path) -> None:
    """`make linux VCPUS=2`: the boot that panicked in extract_entropy now runs /init to its exit."""
    m = Machine(load_config(preset="linux"), load_linux(kernel, initramfs), vcpus=2, mem_mib=256, max_ticks=TICKS,
                cmdline=MAKE_LINUX_APPEND)
    result = m.run()
    log = m.ports.serial.text()
    _clean(log)
    assert (result.status, result.code) == ("exit", 0), (result, log[-3000:])
    assert "smp: Brought up 1 node, 2 CPUs" in log
    assert log.rstrip().endswith("viridian-init: exit 0"), log[-500:]
    assert m.total_stats().exceptions[3] > 0  # the #BPs of text_poke that exposed the stale PC still happen


@pytest.mark.parametrize("preset", ["recommended", "all"])
def test_two_vcpus_boot_to_the_root_mount_panic(kernel: str, preset: str) -> None:
    m = linux_machine(load_config(preset=preset), kernel, vcpus=2, append=DEFAULT_APPEND, max_ticks=TICKS)
    result = m.run()
    log = m.ports.serial.text()
    _clean(log)
    assert result.status == "crash", (result, log[-3000:])
    assert "VFS: Unable to mount root fs" in log, log[-3000:]
    assert "smp: Brought up 1 node, 2 CPUs" in log
