"""Attach the PC's timer devices and interrupting UART to a :class:`~viridian.devices.pc_platform.PcPlatform`:
the ACPI PM block (PM timer, SCI), the HPET, the RTC's interrupts (the CMOS device), COM1's IRQ 4, and the PIIX
reset control register at 0xCF9 (the FADT's RESET_REG, viridian.machine.pc_acpi).

Legacy replacement: the RTC's IRQ 8 and the PIT's IRQ 0 pass through the HPET's :class:`LegacyGate`, so they
are silenced while the guest routes HPET timers 0/1 there (QEMU hpet.c does the same).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from viridian.devices.cmos import DATA_PORT, INDEX_PORT, RTC_IRQ, Cmos
from viridian.devices.hpet import HPET_BASE, HPET_SIZE, Hpet
from viridian.devices.pm_timer import SCI_IRQ, AcpiPm
from viridian.devices.uart16550 import COM1, Serial16550

RCR_PORT: Final = 0xCF9
RCR_SYS_RST, RCR_RST_CPU = 1 << 1, 1 << 2


class ResetControl:
    """PIIX Reset Control Register (I/O 0xCF9, 82371AB data sheet §4.1.17 "RC"): bit 2 RST_CPU set -> reset
    (QEMU piix rcr_write); bit 1 SYS_RST (hard/soft) is kept and reads back; the other bits read 0."""

    def __init__(self, on_reset: Callable[[str], None] | None = None) -> None:
        self.on_reset = on_reset
        self.value = 0
        self.ports = (RCR_PORT,)

    def read(self, port: int, size: int) -> int:
        return self.value if size == 1 else (1 << (8 * size)) - 1

    def write(self, port: int, size: int, value: int) -> None:
        if size != 1:
            return  # a byte register (a 32-bit access at 0xCF8 is PCI configuration, not this)
        if value & RCR_RST_CPU:
            if self.on_reset is not None:
                self.on_reset("port 0xCF9 reset control (RST_CPU)")
            return
        self.value = value & RCR_SYS_RST

    def save_state(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state(self, state: dict[str, Any]) -> None:
        v = state.get("value") if isinstance(state, dict) else None
        if type(v) is not int or v not in (0, RCR_SYS_RST):
            raise ValueError(f"port 0xCF9 state: bad value {v!r}")
        self.value = v


@dataclass
class PcTimers:
    pm: AcpiPm
    hpet: Hpet
    cmos: Cmos
    serial: Serial16550
    reset: ResetControl


def attach_pc_timers(platform: Any, ports: Any, *, cmos: Cmos | None = None,
                     sleep: Callable[[int], None] | None = None, timer_ext: bool = False) -> PcTimers:
    """Create and attach the devices (``ports``: the machine's PortBus, whose ``serial`` is COM1; ``cmos``: an
    existing CMOS to wire, else one is made; ``sleep``: the PM1 SLP_EN callback with SLP_TYP)."""
    now, hz = platform.now, platform.clock.tsc_hz
    pm = AcpiPm(now, hz, irq=platform, ext=timer_ext, sleep=sleep)
    platform.add_port_device(pm.ports, pm, name="acpi_pm")
    platform.add_timed(pm, irqs=(SCI_IRQ,))

    hpet = Hpet(now, hz, irq=platform, gsi=platform.set_gsi)
    platform.add_mmio_device(HPET_BASE, HPET_SIZE, hpet, name="hpet")
    platform.add_timed(hpet)  # legacy IRQ 0/8 or an I/O APIC pin: always consulted (only enabled timers ask)
    pit = getattr(platform, "pit", None)
    if pit is not None:  # PIT OUT0 -> IRQ 0 is silenced in legacy replacement mode
        gate = hpet.gate(pit.irq)
        gate.levels[0] = bool(getattr(pit, "irq_level", False))
        pit.irq = gate

    if cmos is None:
        cmos = Cmos(_Seconds(now, hz))
    cmos.now, cmos.tsc_hz, cmos.irq = now, hz, hpet.gate(platform)
    cmos._synced = now()
    platform.add_port_device((INDEX_PORT, DATA_PORT), cmos, name="rtc")
    platform.add_timed(cmos, irqs=(RTC_IRQ,))

    serial = ports.serial
    serial.irq, serial.now, serial.tsc_hz = platform, now, hz
    platform.add_timed(serial, irqs=(serial.irq_line,))
    if ports.device(COM1) is not serial:
        platform.add_port_device(range(COM1, COM1 + 8), serial)

    reset = ResetControl(on_reset=getattr(platform, "_reset", None))
    platform.add_port_device(reset.ports, reset, name="reset_control")
    return PcTimers(pm, hpet, cmos, serial, reset)


@dataclass
class _Seconds:
    """Virtual seconds from TSC ticks (the CMOS clock's ``seconds``)."""

    now: Callable[[], int]
    tsc_hz: int

    def __call__(self) -> float:
        return self.now() / self.tsc_hz


@dataclass
class S5Sleep:
    """The PM1a_CNT SLP_EN callback: the DSDT's \\_S5_ type (viridian.devices.acpi_sleep.S5_SLP_TYP) powers
    off; other sleep types start no transition (the DSDT declares none) and are counted."""

    power_off: Callable[[], None]
    ignored: int = 0

    def __call__(self, slp_typ: int) -> None:
        from viridian.devices.acpi_sleep import S5_SLP_TYP

        if slp_typ == S5_SLP_TYP:
            self.power_off()
        else:
            self.ignored += 1
