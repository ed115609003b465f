"""ACPI power-off as a run result: an S5 request (the HW-reduced Sleep Control register, or the PC's PM1a_CNT)
ends the run like the exit port -- status "exit", code 0 (ACPI 6.4 §4.8.3.7, §16.1.7)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from viridian.devices.acpi_sleep import AcpiSleep
from viridian.machine.ports import ExitRequested


@dataclass
class PowerOff:
    """An S5 request ends the run like the exit port (ExitRequested(0): status "exit", code 0)."""

    machine: Any

    def __call__(self) -> None:
        self.machine.ports.exit_code = 0
        raise ExitRequested(0)


def attach_acpi_sleep(machine: Any) -> AcpiSleep:
    """Claim the Sleep Control/Status ports on ``machine``'s port bus (an S5 request: :class:`PowerOff`)."""
    dev = AcpiSleep(PowerOff(machine))
    machine.ports.attach(dev.ports, dev)
    return dev
