"""The PC platform (``--machine pc``), engine-free: the devices a kernel finds under QEMU's ``-machine pc -kernel``
once SeaBIOS has handed over, their interrupt wiring, and the one-call API other devices attach through.

Wiring (QEMU pc / PIIX, MADT of viridian.machine.linux_acpi):
* ISA IRQ n (``set_irq``) drives 8259A input n (IRQ 2 is the cascade) and I/O APIC pin n, except IRQ 0, which
  reaches pin 2 (MADT interrupt source override 0 -> GSI 2). ISA lines are edge/active-high unless ELCR / an
  override says level (IRQ 9, the SCI). ``set_gsi`` drives an I/O APIC pin alone (HPET routes, PCI).
* The 8259A's INT goes to the BSP's LINT0: delivered as ExtINT (SDM §10.5.1 virtual wire) while LVT LINT0 is
  unmasked with delivery mode ExtINT; the vCPU then acknowledges the PIC (:meth:`PcPlatform.extint_pending`,
  :meth:`PcPlatform.extint_ack`).
* I/O APIC messages go to the local APICs through the :class:`ApicBus` (physical or logical destination, lowest
  priority = the lowest-numbered software-enabled target, as the bus does for IPIs); a level-triggered vector's
  EOI comes back through :meth:`eoi_broadcast` (the LocalApic's ``on_eoi_broadcast``) and clears Remote IRR.

Hand-off state: PIC initialised (vector bases 0x08/0x70) with every line masked, PIT channel 0 in mode 2 at
18.2 Hz as SeaBIOS leaves it, I/O APIC entries masked, the BSP's LVT LINT0 = ExtINT (0x700) and LINT1 = NMI
(0x400) as SeaBIOS programs them (the machine sets those). A guest that never unmasks anything sees no
interrupt and no exit from any of it; a masked source also asks for no wake-up (its deadline is ignored).

Attaching a device (call these while the machine is being built, before the vCPUs exist):
* ``add_port_device(ports, dev)``: ``dev.read(port, size)`` / ``dev.write(port, size, value)`` on the port bus;
* ``add_mmio_device(base, size, dev)``: ``dev.mmio_read(offset, size)`` / ``dev.mmio_write(offset, size, value)``;
* ``add_timed(dev, irqs=None)``: ``dev.next_deadline()`` joins the machine's deadlines (a halted vCPU wakes, a
  running one ends its slice there) and ``dev.advance(now)`` is called when it falls due; ``irqs``: the ISA IRQs
  its output drives -- its deadline is then ignored while all of them are masked everywhere (None: always used).
Before a guest port or MMIO access, the device accessed and every timed device whose deadline has come are brought
up to ``now`` (:meth:`PcPlatform.sync`), so a guest reads the same values whatever the scheduling. Devices raise
interrupts through the platform itself (it is an :class:`~viridian.devices.pc_api.IrqSink`; ``set_gsi`` for I/O APIC
pins). ``add_state(name, dev)`` puts a device's save_state/load_state into the platform's snapshot (devices added
above are included by themselves).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from viridian.clock import VirtualClock
from viridian.devices import ioapic as io
from viridian.devices.apic_bus import ApicBus
from viridian.devices.lapic_defs import DeliveryMode
from viridian.devices.pc_ports import I8042, PortA, PostPort
from viridian.devices.pic import PicPair
from viridian.devices.pit import Pit

ISA_IRQS = 16
LVT_LINT0, LVT_LINT1 = 0x350, 0x360
LINT0_EXTINT, LINT1_NMI = 0x700, 0x400  # SeaBIOS: LINT0 ExtINT, LINT1 NMI, both unmasked (SDM §10.5.1)
LVT_MASKED, LVT_MODE = 1 << 16, 0x700


def isa_gsi(irq: int) -> int:
    """The I/O APIC pin of ISA ``irq`` (MADT interrupt source override IRQ 0 -> GSI 2, QEMU pc)."""
    return 2 if irq == 0 else irq


class PortAttach(Protocol):
    def attach(self, ports: range | tuple[int, ...], device: Any) -> None: ...


@dataclass
class _Timed:
    dev: Any
    irqs: tuple[int, ...] | None


@dataclass
class MmioRegion:
    base: int
    size: int
    dev: Any


class PcPlatform:
    """PIC pair, PIT + port B, I/O APIC, port 0x92, port 0x80, i8042 -- and whatever else is attached."""

    def __init__(self, clock: VirtualClock, bus: ApicBus, ports: PortAttach,
                 on_reset: Callable[[str], None] | None = None) -> None:
        self.clock, self.bus, self._ports = clock, bus, ports
        self.on_reset = on_reset
        self.now = clock.tsc
        self.mmio: list[MmioRegion] = []
        self._timed: list[_Timed] = []
        self._state: dict[str, Any] = {}
        self.changed = False  # an interrupt or a deadline may have changed: the vCPU re-evaluates
        self.syncs = 0  # guest accesses (sync calls) and state loads so far: next_deadline() can move earlier
        # only through one of these (poll's advances move deadlines later) -- what a cached deadline checks
        self.resets: list[str] = []
        self.timers: Any = None  # viridian.devices.pc_timers.PcTimers once attached (PM timer, HPET, RTC, UART)
        self.pic = PicPair(on_intr=self._on_intr)
        self.ioapic = io.IoApic(deliver=self._deliver)
        self.pit = Pit(self.now, clock.tsc_hz, irq=self)
        self.port_a = PortA(on_reset=self._reset)
        self.post = PostPort()
        self.i8042 = I8042(irq=self, on_reset=self._reset)
        for name, dev in (("pic", self.pic), ("pit", self.pit), ("port_a", self.port_a), ("post", self.post),
                          ("i8042", self.i8042)):
            self.add_port_device(dev.ports, dev, name=name)
        self.add_mmio_device(io.BASE, io.SIZE, self.ioapic, name="ioapic")
        self.add_timed(self.pit, irqs=(0,))
        self.pic.bios_init()
        self.pit.bios_init()

    # -- attaching devices --------------------------------------------------------------------------------
    def add_port_device(self, ports: Iterable[int], dev: Any, *, name: str | None = None) -> None:
        self._ports.attach(tuple(ports), dev)
        if name is not None:
            self.add_state(name, dev)

    def add_mmio_device(self, base: int, size: int, dev: Any, *, name: str | None = None) -> None:
        for r in self.mmio:
            if base < r.base + r.size and r.base < base + size:
                raise ValueError(f"MMIO {base:#x}+{size:#x} overlaps {r.base:#x}+{r.size:#x}")
        self.mmio.append(MmioRegion(base, size, dev))
        if name is not None:
            self.add_state(name, dev)

    def add_timed(self, dev: Any, irqs: Iterable[int] | None = None) -> None:
        self._timed.append(_Timed(dev, None if irqs is None else tuple(irqs)))
        self.changed = True

    def add_state(self, name: str, dev: Any) -> None:
        if name in self._state:
            raise ValueError(f"platform device name {name!r} used twice")
        self._state[name] = dev

    # -- IrqSink -----------------------------------------------------------------------------------------------
    def set_irq(self, irq: int, level: bool) -> None:
        """ISA IRQ ``irq``: the 8259A input and the I/O APIC pin (IRQ 0 -> pin 2)."""
        if not 0 <= irq < ISA_IRQS:
            return
        self.pic.set_irq(irq, level)
        self.ioapic.set_irq(isa_gsi(irq), level)

    def set_gsi(self, gsi: int, level: bool) -> None:
        """An I/O APIC input pin directly (GSI = pin; nothing else sees it)."""
        self.ioapic.set_irq(gsi, level)

    def irq_enabled(self, irq: int) -> bool:
        """Whether ISA ``irq`` can reach a CPU now: unmasked at the 8259A or at its I/O APIC pin."""
        return self.pic.line_enabled(irq) or self.ioapic.pin_enabled(isa_gsi(irq))

    # -- time ------------------------------------------------------------------------------------------------
    def next_deadline(self) -> int | None:
        """The nearest deadline of a timed device whose output can reach a CPU (TSC ticks)."""
        best: int | None = None
        for t in self._timed:  # the deadline first: masks are looked at only for one that would count
            d = t.dev.next_deadline()
            if d is None or (best is not None and d >= best):
                continue
            if t.irqs is None or self._reaches(t.irqs):
                best = d
        return best

    def poll(self) -> None:
        """Advance the devices whose (unmasked) deadline has come."""
        now = self.now()
        for t in self._timed:  # both checks are pure: the cheap one (is it due?) first, on every poll
            d = t.dev.next_deadline()
            if d is not None and d <= now and (t.irqs is None or self._reaches(t.irqs)):
                t.dev.advance(now)

    def _reaches(self, irqs: tuple[int, ...]) -> bool:
        return any(self.irq_enabled(i) for i in irqs)

    def sync(self, dev: Any = None) -> None:
        """Before a guest access to ``dev`` (None: some platform port or MMIO): ``dev`` is brought up to now, and
        so is every timed device whose deadline has come, masked or not (its edges reach the PIC's IRR and the
        I/O APIC in time order before the guest looks). A device with a later deadline has nothing to raise."""
        self.syncs += 1
        now = self.now()
        for t in self._timed:
            if t.dev is dev:
                t.dev.advance(now)
                continue
            d = t.dev.next_deadline()
            if d is not None and d <= now:
                t.dev.advance(now)

    def touched(self) -> None:
        """A guest access that reached a device without :meth:`sync` (the real-mode start-up instance's port I/O):
        whatever cached :meth:`next_deadline` against ``syncs`` recomputes it."""
        self.syncs += 1

    def take_changed(self) -> bool:
        """True once after anything that may have changed an interrupt or a deadline (a port/MMIO write)."""
        changed, self.changed = self.changed, False
        return changed

    # -- MMIO ------------------------------------------------------------------------------------------------
    def region(self, address: int) -> MmioRegion | None:
        for r in self.mmio:
            if r.base <= address < r.base + r.size:
                return r
        return None

    def mmio_read(self, region: MmioRegion, offset: int, size: int) -> int:
        self.sync(region.dev)
        return int(region.dev.mmio_read(offset, size)) & ((1 << (8 * size)) - 1)

    def mmio_write(self, region: MmioRegion, offset: int, size: int, value: int) -> None:
        self.sync(region.dev)
        region.dev.mmio_write(offset, size, value & ((1 << (8 * size)) - 1))
        self.changed = True

    # -- interrupt paths -----------------------------------------------------------------------------------
    def _on_intr(self, level: bool) -> None:
        if level and len(self.bus):
            self.changed = True
            self.bus.kick(self.bus[0])

    def extint_pending(self) -> bool:
        """The PIC's INT is up and the BSP accepts it: LVT LINT0 unmasked with delivery mode ExtINT (7), or the
        APIC globally disabled."""
        if not self.pic.intr or not len(self.bus):
            return False
        bsp = self.bus[0]
        if not bsp.hw_enabled:
            return True  # a globally disabled APIC passes INTR straight through (KVM kvm_apic_accept_pic_intr)
        lvt = bsp.read_register(LVT_LINT0)
        return not lvt & LVT_MASKED and lvt & LVT_MODE == LINT0_EXTINT

    def extint_ack(self) -> int:
        """The vCPU's interrupt acknowledge cycle: the 8259A's vector."""
        return self.pic.inta()

    def _deliver(self, dest: int, logical: bool, mode: int, vector: int, level: bool) -> bool:
        """An I/O APIC message (82093AA §3.2.4; destinations as the ApicBus resolves IPIs, SDM §11.6.2)."""
        present = [a for a in self.bus if a.hw_enabled]
        if dest == 0xFF:
            targets = present
        elif logical:
            targets = [a for a in present if a.matches_logical(dest)]
        else:
            targets = [a for a in present if a.apic_id == dest]
        if mode == DeliveryMode.LOWEST_PRIORITY:
            targets = [a for a in targets if a.sw_enabled][:1]
        hit = False
        for t in targets:
            if mode in (DeliveryMode.FIXED, DeliveryMode.LOWEST_PRIORITY):
                hit = t.assert_interrupt(vector, level=level) or hit
            elif mode in (DeliveryMode.NMI, DeliveryMode.INIT):
                hit = self.bus.deliver(t, DeliveryMode(mode), vector) or hit
            # SMI, ExtINT and the reserved modes are not delivered through the I/O APIC here
        self.changed = self.changed or hit
        return hit

    def eoi_broadcast(self, vector: int) -> None:
        """A local APIC's EOI of a level-triggered vector (SDM §10.8.5): the I/O APIC clears Remote IRR."""
        self.ioapic.eoi(vector)

    def _reset(self, why: str) -> None:
        self.resets.append(why)
        if self.on_reset is not None:
            self.on_reset(why)

    # -- snapshots ---------------------------------------------------------------------------------------------
    def save_state(self) -> dict[str, Any]:
        return {name: dev.save_state() for name, dev in self._state.items()}

    def load_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or set(state) != set(self._state):
            raise ValueError("PC platform state: the device set differs")
        self.syncs += 1
        for name, dev in self._state.items():
            dev.load_state(state[name])


__all__ = ["ISA_IRQS", "LINT0_EXTINT", "LINT1_NMI", "MmioRegion", "PcPlatform", "isa_gsi"]
