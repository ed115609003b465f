"""The PC platform under real guest code (--machine pc): TSC calibration against PIT channel 2 through port
0x61, PIT IRQ 0 through the 8259A and LINT0 ExtINT, PIT IRQ 0 through I/O APIC pin 2 and a level pin; and the
same fixture guests seeing exactly the same on pc as on minimal."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from viridian.config.presets import load_config
from viridian.machine.loader import load_image
from viridian.machine.machine import Machine


def run(path: Path, board: str = "pc", preset: str = "none", vcpus: int = 1) -> Machine:
    m = Machine(load_config(preset=preset), load_image(path), vcpus=vcpus, board=board, max_ticks=4_000_000_000)
    m.run()
    return m


def outcome(m: Machine) -> tuple[Any, ...]:
    s = m.total_stats()
    assert m.result is not None
    return m.result.status, m.result.code, m.ports.serial.text(), m.clock.tsc(), dict(s.by_reason), \
        s.interrupts_delivered


def test_tsc_calibrates_against_pit_channel2(guests: Path) -> None:
    m = run(guests / "pit_calibrate.elf")
    assert (m.result.status, m.result.code) == ("exit", 0), m.ports.serial.text()
    hz = int(re.search(r"tsc_hz=(\d+)", m.ports.serial.text()).group(1))  # type: ignore[union-attr]
    assert abs(hz - m.clock.tsc_hz) <= m.clock.tsc_hz // 10_000  # 100 ppm (one exit per spin)


def test_pit_irq0_through_the_pic_and_extint(guests: Path) -> None:
    m = run(guests / "pic_pit.elf")
    assert (m.result.status, m.result.code) == ("exit", 0), m.ports.serial.text()
    assert "irq0 ticks=10 " in m.ports.serial.text()
    per_tick = int(re.search(r"tsc_per_tick=(\d+)", m.ports.serial.text()).group(1))  # type: ignore[union-attr]
    assert abs(per_tick - 1193 * m.clock.tsc_hz // 1_193_182) < 1193 * m.clock.tsc_hz // 1_193_182 // 10


def test_pit_through_ioapic_pin2_and_a_level_pin(guests: Path) -> None:
    m = run(guests / "ioapic.elf")
    assert (m.result.status, m.result.code) == ("exit", 0), m.ports.serial.text()
    assert "edge ticks=10\n" in m.ports.serial.text() and "level interrupts=2\n" in m.ports.serial.text()


def test_pc_guests_fail_cleanly_on_minimal(guests: Path) -> None:
    m = run(guests / "pic_pit.elf", board="minimal")
    assert (m.result.status, m.result.code) == ("exit", 140)  # no PIC: the IMR reads all ones


@pytest.mark.parametrize(("name", "vcpus", "preset"), [("hello", 2, "recommended"), ("apic_timer", 1, "none"),
                                                        ("ipi", 2, "none"), ("stimer", 1, "all")])
def test_guests_that_never_touch_the_pc_see_the_same(guests: Path, name: str, vcpus: int, preset: str) -> None:
    a = outcome(run(guests / f"{name}.elf", "minimal", preset, vcpus))
    b = outcome(run(guests / f"{name}.elf", "pc", preset, vcpus))
    assert a == b and a[:2] == ("exit", 0)


@pytest.mark.parametrize("vcpus", [2, 3])
def test_ioapic_physical_logical_and_lowest_priority_destinations(guests: Path, vcpus: int) -> None:
    m = run(guests / "ioapic_smp.elf", vcpus=vcpus)
    out = m.ports.serial.text()
    assert (m.result.status, m.result.code) == ("exit", 0), out
    assert "physical: vcpu0=0 vcpu1=5\n" in out and "lowest priority: vcpu1=0\n" in out


def test_cli_machine_option(guests: Path) -> None:
    import subprocess
    import sys

    def cli(*args: str) -> int:
        return subprocess.run([sys.executable, "-m", "viridian", "run", str(guests / "pic_pit.elf"), "--quiet",
                               *args], capture_output=True, check=False).returncode

    assert cli() == 0  # pc is the default
    assert cli("--machine", "minimal") == 140
    assert cli("--machine", "isa") == 2


@pytest.mark.parametrize(("cmdline", "status", "code", "detail"), [
    ("k", "reset", None, "i8042 command 0xfe (pulse reset)"),
    ("a", "reset", None, "port 0x92 bit 0 (fast reset)"),
    ("p", "exit", 0, ""),
])
def test_reset_paths_and_port_80(guests: Path, cmdline: str, status: str, code: int | None, detail: str) -> None:
    m = Machine(load_config(preset="none"), load_image(guests / "pc_reset.elf"), board="pc", cmdline=cmdline,
                max_ticks=1_000_000_000)
    m.run()
    assert m.result is not None and (m.result.status, m.result.code, m.result.detail) == (status, code, detail)
