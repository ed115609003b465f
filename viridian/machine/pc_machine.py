"""``--machine pc``: the PC platform (viridian.devices.pc_platform) wired into a Machine and its vCPUs.

* :func:`attach_pc` builds the platform on the machine's clock, APIC bus and port bus, hooks every local APIC's
  EOI broadcast to the I/O APIC and programs the BSP's LVT LINT0 = ExtINT and LINT1 = NMI (what SeaBIOS leaves).
  A reset request (port 0x92 bit 0, i8042 0xFE) ends the run with status "reset".
* :func:`map_mmio` maps the platform's MMIO regions (I/O APIC, HPET...) into a vCPU's engine; each access is an
  "mmio" exit. :func:`after_access` runs after a port or MMIO access to the platform: if an interrupt may have
  become pending the engine stops at the next block start (the run loop injects it), and a timer deadline the
  access armed ends the run on time (Vcpu.clip_to_deadline).
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from viridian.devices.pc_platform import LINT0_EXTINT, LINT1_NMI, MmioRegion, PcPlatform

if TYPE_CHECKING:
    from viridian.machine.backend import VcpuBackend as Vcpu
    from viridian.machine.machine import Machine

BOARDS = ("pc", "minimal")
PAGE = 0x1000


@dataclass
class PcReset:
    """A platform reset request ends the run "reset" (a class, not a closure: snapshots pickle machines)."""

    machine: Any

    def __call__(self, why: str) -> None:
        m = self.machine
        m.finish("reset", vcpu=m.running.index if m.running is not None else None, detail=why)
        if m.running is not None:
            m.running.stop()


def attach_pc(m: Machine) -> PcPlatform:
    platform = PcPlatform(m.clock, m.bus, m.ports, on_reset=PcReset(m))
    for apic in m.apics:
        apic.on_eoi_broadcast = platform.eoi_broadcast
    bsp = m.apics[0]
    bsp.write_register(0x350, LINT0_EXTINT)  # SDM §10.5.1 virtual wire, as SeaBIOS programs the BSP
    bsp.write_register(0x360, LINT1_NMI)
    from viridian.devices.pc_timers import S5Sleep, attach_pc_timers
    from viridian.machine.power import PowerOff

    # PM timer/SCI, HPET, RTC interrupts, COM1's IRQ 4, 0xCF9 (pc-timers); S5 through PM1a_CNT ends the run
    platform.timers = attach_pc_timers(platform, m.ports, sleep=S5Sleep(PowerOff(m)))
    return platform


def after_access(v: Vcpu, write: bool = True) -> None:
    """After a guest access to the platform: stop at the next block start if an interrupt may have become
    pending; after a write (or any change) end the run at the nearest deadline, which the write may have armed."""
    p = v.m.platform
    if p is None:
        return
    changed = p.take_changed()
    if changed:
        v.recheck_at_next_block()
    if changed or write:
        v.clip_to_deadline()


def map_mmio(v: Vcpu) -> None:
    p = v.m.platform
    if p is None:
        return
    for r in p.mmio:
        size = (r.size + PAGE - 1) & ~(PAGE - 1)
        v.map_mmio(r.base, size, _reader(v, p, r), _writer(v, p, r))


def _reader(v: Vcpu, p: PcPlatform, r: MmioRegion) -> Any:
    def read(offset: int, size: int) -> int:
        try:
            v.count_exit("mmio")
            v.stats.events[f"mmio@{r.base:#x}"] += 1  # per device (its base)
            if offset >= r.size:
                return 0
            value = p.mmio_read(r, offset, size)
            after_access(v, write=False)
            return value
        except Exception as exc:
            v.m.finish("error", vcpu=v.index, detail=f"host error in MMIO read at {r.base + offset:#x}: {exc!r}",
                       traceback=traceback.format_exc())
            v.stop()
            return 0

    return read


def _writer(v: Vcpu, p: PcPlatform, r: MmioRegion) -> Any:
    def write(offset: int, size: int, value: int) -> None:
        try:
            v.count_exit("mmio")
            v.stats.events[f"mmio@{r.base:#x}"] += 1
            if offset < r.size:
                p.mmio_write(r, offset, size, value)
                after_access(v)
        except Exception as exc:
            v.m.finish("error", vcpu=v.index, detail=f"host error in MMIO write at {r.base + offset:#x}: {exc!r}",
                       traceback=traceback.format_exc())
            v.stop()

    return write


__all__ = ["BOARDS", "after_access", "attach_pc", "map_mmio"]
