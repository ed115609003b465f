"""A Linux machine (CMOS clock, ACPI power-off, initramfs) survives snapshot / restore and finishes its run."""

from __future__ import annotations

from pathlib import Path

from viridian.config.presets import load_config
from viridian.machine import snapshot
from viridian.machine.linux_machine import linux_machine

INITRD = Path(__file__).resolve().parents[2] / "fixtures" / "build" / "initramfs.cpio"
APPEND = "console=ttyS0 panic=-1 nokaslr viridian.iters=4"


def _machine(kernel: str, max_ticks: int):  # type: ignore[no-untyped-def]
    return linux_machine(load_config(preset="linux"), kernel, initrd=INITRD, append=APPEND, vcpus=1,
                         max_ticks=max_ticks)


def test_a_booting_kernel_is_snapshotted_and_resumed_to_its_exit(kernel: str, tmp_path: Path) -> None:
    first = _machine(kernel, 600_000_000)  # stopped mid-boot, before user space
    assert first.run().status == "timeout"
    path = tmp_path / "linux.snap"
    options = {"image": kernel, "preset": "linux", "cpuid": [], "vcpus": 1, "mem": 256, "max_ticks": 20_000_000_000,
               "quantum": 200_000, "ple_window": 4096, "ple_gap": 128, "ap_start": "entry", "fast": False,
               "cmdline": APPEND}
    snapshot.prepare(first)
    snapshot.save(first, str(path), options)
    second = _machine(kernel, 20_000_000_000)
    with snapshot.open_snapshot(str(path)) as snap:
        snapshot.load_into(second, snap)
    res = second.run()
    assert (res.status, res.code) == ("exit", 0), second.ports.serial.text()[-2000:]
    assert "viridian-init: exit 0" in second.ports.serial.text()
