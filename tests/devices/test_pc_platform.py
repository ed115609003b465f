"""The PC platform's wiring (engine-free): ISA IRQs to the 8259A and the I/O APIC (IRQ 0 -> pin 2), ExtINT through
the BSP's LINT0, deadlines only while a source can reach a CPU, the attach API; ports 0x92, 0x80 and the i8042
(IBM PC/AT keyboard controller commands, QEMU pckbd behaviour)."""

from __future__ import annotations

from typing import Any

import pytest

from viridian.clock import VirtualClock
from viridian.devices.apic_bus import ApicBus
from viridian.devices.pc_platform import LINT0_EXTINT, PcPlatform
from viridian.devices.pc_ports import I8042, PortA, PostPort


class Ports:
    def __init__(self) -> None:
        self.devs: dict[int, Any] = {}

    def attach(self, ports: Any, device: Any) -> None:
        for p in ports:
            self.devs[p] = device

    def read(self, port: int) -> int:
        return int(self.devs[port].read(port, 1))

    def write(self, port: int, value: int) -> None:
        self.devs[port].write(port, 1, value)


def make(lint0: int = LINT0_EXTINT) -> tuple[PcPlatform, Ports, list[str]]:
    clock, ports, resets = VirtualClock(), Ports(), []
    bus = ApicBus.create(1, clock)
    bus[0].write_register(0xF0, 0x1FF)
    bus[0].write_register(0x350, lint0)
    return PcPlatform(clock, bus, ports, on_reset=resets.append), ports, resets


def test_handoff_pit_running_but_masked_asks_for_no_wakeup() -> None:
    p, _ports, _ = make()
    assert p.pit.next_deadline() is not None  # channel 0 runs (SeaBIOS mode 2, 18.2 Hz)
    assert p.next_deadline() is None  # IRQ 0 masked at the PIC and at I/O APIC pin 2
    assert not p.extint_pending()


def test_unmasked_pit_irq0_reaches_the_bsp_as_extint() -> None:
    p, ports, _ = make()
    ports.write(0x21, 0xFE)
    d = p.next_deadline()
    assert d == p.pit.next_deadline()
    p.clock.set_tsc(d)
    p.poll()
    assert p.extint_pending()
    assert p.extint_ack() == 0x08  # SeaBIOS's master base
    assert not p.extint_pending()


def test_masked_lint0_blocks_extint() -> None:
    p, ports, _ = make(lint0=LINT0_EXTINT | 1 << 16)
    ports.write(0x21, 0xFE)
    p.set_irq(0, True)
    assert p.pic.intr and not p.extint_pending()


@pytest.mark.parametrize(("irq", "pin"), [(0, 2), (1, 1), (4, 4), (8, 8), (9, 9), (15, 15)])
def test_isa_irq_to_ioapic_pin(irq: int, pin: int) -> None:
    p, _, _ = make()
    p.ioapic.mmio_write(0, 4, 0x10 + 2 * pin)
    p.ioapic.mmio_write(0x10, 4, 0x40)
    p.set_irq(irq, True)
    assert p.bus[0].irr_vectors() == [0x40]


def test_attach_api() -> None:
    p, ports, _ = make()

    class Timed:
        def __init__(self) -> None:
            self.advanced: list[int] = []

        def next_deadline(self) -> int | None:
            return 500

        def advance(self, now: int) -> None:
            self.advanced.append(now)

        def read(self, port: int, size: int) -> int:
            return 0x5A

        def write(self, port: int, size: int, value: int) -> None:
            pass

    dev = Timed()
    p.add_port_device((0x1234,), dev)
    p.add_timed(dev)
    assert ports.read(0x1234) == 0x5A and p.next_deadline() == 500
    p.clock.set_tsc(600)
    p.poll()
    assert dev.advanced == [600]
    with pytest.raises(ValueError):
        p.add_mmio_device(0xFEC00800, 0x100, dev)  # overlaps the I/O APIC


def test_port_92_reset_on_rising_bit0_and_a20_readback() -> None:
    resets: list[str] = []
    a = PortA(resets.append)
    assert a.read(0x92, 1) == 0x02
    a.write(0x92, 1, 0x02)
    assert resets == []
    a.write(0x92, 1, 0x03)
    assert len(resets) == 1


def test_port_80_absorbs_writes_and_reads_all_ones() -> None:
    p = PostPort()
    p.write(0x80, 1, 0x12)
    assert p.read(0x80, 1) == 0xFF and p.read(0x80, 2) == 0xFFFF


class Irqs:
    def __init__(self) -> None:
        self.levels: dict[int, bool] = {}

    def set_irq(self, irq: int, level: bool) -> None:
        self.levels[irq] = level


@pytest.mark.parametrize(("cmd", "reply"), [(0xAA, 0x55), (0xA9, 0x00), (0xAB, 0x00), (0x20, 0x45), (0xD0, 0x03)])
def test_i8042_commands_with_a_reply(cmd: int, reply: int) -> None:
    k = I8042(Irqs())
    k.write(0x64, 1, cmd)
    assert k.read(0x64, 1) & 0x01
    assert k.read(0x60, 1) == reply
    assert not k.read(0x64, 1) & 0x01


def test_i8042_ctr_write_echo_and_irqs() -> None:
    irqs = Irqs()
    k = I8042(irqs)
    k.write(0x64, 1, 0x60)
    k.write(0x60, 1, 0x47)  # CTR: keyboard and AUX interrupts on
    k.write(0x64, 1, 0x20)
    assert k.read(0x60, 1) == 0x47
    k.write(0x64, 1, 0xD3)
    k.write(0x60, 1, 0x5A)  # echoed as AUX data: IRQ 12
    assert k.read(0x64, 1) & 0x21 == 0x21 and irqs.levels.get(12) is True and not irqs.levels.get(1)
    assert k.read(0x60, 1) == 0x5A and not irqs.levels[12]
    k.write(0x64, 1, 0xD2)
    k.write(0x60, 1, 0x11)  # keyboard data: IRQ 1
    assert irqs.levels[1]
    assert k.read(0x60, 1) == 0x11 and not irqs.levels[1]


@pytest.mark.parametrize(("cmd", "resets"), [(0xFE, 1), (0xFF, 0), (0xF0, 1), (0xAD, 0)])
def test_i8042_pulse_reset(cmd: int, resets: int) -> None:
    seen: list[str] = []
    k = I8042(Irqs(), seen.append)
    k.write(0x64, 1, cmd)
    assert len(seen) == resets


def test_i8042_no_keyboard_drops_device_bytes() -> None:
    k = I8042(Irqs())
    k.write(0x60, 1, 0xF2)  # "identify" to a keyboard that is not there
    assert not k.read(0x64, 1) & 0x01


def test_platform_state_round_trip() -> None:
    p, ports, _ = make()
    ports.write(0x21, 0xFE)
    ports.write(0x43, 0x34)
    ports.write(0x40, 0x10)
    ports.write(0x40, 0x00)
    state = p.save_state()
    q, _, _ = make()
    q.load_state(state)
    assert q.save_state() == state
    with pytest.raises(ValueError):
        q.load_state({"pic": state["pic"]})
