"""Guest-level tests of the PC's timer devices and interrupting UART (--machine pc): fixture guests that
calibrate the TSC against the ACPI PM timer and take its SCI, run HPET timers through legacy replacement and an
I/O APIC route, count RTC periodic/update-ended interrupts, and transmit through the 16550's THRE interrupt
(fixtures/guests/machine/README.md lists what each checks)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from viridian.config.presets import load_config
from viridian.machine.loader import load_image
from viridian.machine.machine import Machine
from viridian.report.run import stats_json


def run_pc(path: Path, preset: str = "none") -> tuple[Machine, dict[str, Any]]:
    m = Machine(load_config(preset=preset), load_image(path), vcpus=1, max_ticks=10_000_000_000, board="pc")
    m.run()
    return m, stats_json(m)


def ok(s: dict[str, Any]) -> None:
    assert (s["result"]["status"], s["result"]["code"]) == ("exit", 0), s["serial"]


def test_tsc_calibrates_against_the_pm_timer_and_its_sci_arrives(guests: Path) -> None:
    _, s = run_pc(guests / "pm_timer.elf")
    ok(s)
    khz = int(re.search(r"pm_timer tsc_khz=(\d+)", s["serial"]).group(1))  # type: ignore[union-attr]
    assert abs(khz - 2_000_000) <= 2_000  # the virtual TSC runs at 2 GHz
    assert "sci count=1 at pm=0x8000" in s["serial"]


def test_hpet_periodic_legacy_and_level_route(guests: Path) -> None:
    _, s = run_pc(guests / "hpet.elf")
    ok(s)
    assert "hpet id=0x8086a201 period_fs=10000000" in s["serial"]
    assert "hpet 4 periods tsc=8000000" in s["serial"]  # 4 x 1 ms of 100 MHz ticks, exactly
    assert "hpet level interrupts=1" in s["serial"]


def test_rtc_periodic_and_update_ended_interrupts(guests: Path) -> None:
    _, s = run_pc(guests / "rtc_irq.elf")
    ok(s)
    assert "rtc 7 periods tsc=13671875" in s["serial"]  # 7 x 32 cycles of 32.768 kHz at 2 GHz
    assert "rtc interrupts without reading C: 1" in s["serial"]


@pytest.mark.parametrize("preset", ["none", "recommended"])
def test_uart_thre_interrupt_driven_transmit(guests: Path, preset: str) -> None:
    m, s = run_pc(guests / "uart_irq.elf", preset)
    ok(s)
    assert "interrupt-driven hello from the 16550\nuart irqs=4 iir=0xc1\n" in s["serial"]
    assert m.ports.serial.native_ok() == (True, True)  # idle again: the C console path is back


def test_minimal_machine_has_none_of_them(guests: Path) -> None:
    m = Machine(load_config(preset="none"), load_image(guests / "pm_timer.elf"), vcpus=1, max_ticks=50_000_000)
    res = m.run()
    assert res.status != "exit" or res.code != 0  # no PM timer: the calibration cannot finish
    assert m.ports.unclaimed[0xB008] > 0


@pytest.mark.parametrize("guest", ["uart_irq", "rtc_irq"])
def test_native_console_path_gives_the_same_run(guests: Path, guest: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """COM1's C fast path (LSR reads, THR writes) steps aside while the model must answer (ETBEI, loopback):
    the same serial log, exits and virtual time with and without it."""
    def outcome() -> tuple[Any, ...]:
        m, s = run_pc(guests / f"{guest}.elf")
        ok(s)
        return s["serial"], s["exits"]["by_reason"], m.clock.tsc()

    native = outcome()
    monkeypatch.setenv("VIRIDIAN_DISABLE", "native_serial")
    assert outcome() == native
