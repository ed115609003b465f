"""16550A interrupts of viridian.devices.uart16550 (PC16550D data sheet Table IV; QEMU serial.c where it leaves
room): IER, IIR priority and the THRE source (set when THR empties and when ETBEI goes 0->1 with THR empty,
cleared by an IIR read reporting it or a THR write), MCR.OUT2 gating IRQ 4, loopback (MSR from MCR, THR to the
receiver), the receive FIFO trigger and timeout, LSR error clearing, and the native fast path's conditions."""

from __future__ import annotations

import pytest
from device_harness import Clock, Lines

from viridian.devices.uart16550 import (
    COM1,
    IER_MSI,
    IER_RDI,
    IER_RLSI,
    IER_THRI,
    IIR_CTI,
    IIR_NONE,
    IIR_RDI,
    IIR_RLSI,
    IIR_THRI,
    MCR_LOOP,
    MCR_OUT2,
    Serial16550,
)

HZ = 2_000_000_000
THR, IER, IIR, FCR, LCR, MCR, LSR, MSR = (COM1 + i for i in (0, 1, 2, 2, 3, 4, 5, 6))


def make() -> tuple[Serial16550, Clock, Lines]:
    clock, lines = Clock(), Lines()
    return Serial16550(irq=lines, now=clock, tsc_hz=HZ), clock, lines


def test_hand_off_state() -> None:
    u, _, _ = make()
    assert [u.read(p, 1) for p in (IER, IIR, LCR, MCR, LSR, MSR)] == [0, 0x01, 0x03, 0, 0x60, 0xB0]
    assert u.native_ok() == (True, True)


def test_linux_autoconfig_ier_scratch_and_fifo_probe() -> None:
    u, _, _ = make()
    u.write(IER, 1, 0)
    assert u.read(IER, 1) == 0
    u.write(IER, 1, 0x0F)
    assert u.read(IER, 1) == 0x0F
    u.write(IER, 1, 0)
    u.write(FCR, 1, 1)
    assert u.read(IIR, 1) >> 6 == 3  # FIFOs on: a 16550A


def test_linux_thre_test_and_interrupt_driven_transmit() -> None:
    """serial8250_startup's THRE test: IER <- THRI, read IIR, IER <- 0, IER <- THRI, read IIR -- THRE must be
    reported both times (else UART_BUG_THRE); then a transmit burst makes a fresh edge per THR write."""
    u, _, lines = make()
    u.write(MCR, 1, MCR_OUT2 | 3)
    u.write(IER, 1, IER_THRI)
    assert lines.log == [(4, True)]
    assert u.read(IIR, 1) & 0x0F == IIR_THRI
    assert lines.log[-1] == (4, False)  # the IIR read that reported THRE cleared it
    assert u.read(IIR, 1) & 0x0F == IIR_NONE
    u.write(IER, 1, 0)
    u.write(IER, 1, IER_THRI)  # ETBEI 0 -> 1 with THR empty re-arms
    assert u.read(IIR, 1) & 0x0F == IIR_THRI
    lines.log.clear()
    for ch in b"ok":
        u.write(THR, 1, ch)
    assert u.output == b"ok" and u.read(LSR, 1) == 0x60
    assert lines.log == [(4, True), (4, False), (4, True)]  # low after the first (cleared by IIR), pulse after
    assert u.native_ok() == (True, False)  # ETBEI on: THR writes must come to the model


@pytest.mark.parametrize("mcr, raised", [(0, False), (MCR_OUT2, True), (MCR_OUT2 | MCR_LOOP, False)])
def test_out2_gates_the_pc_irq(mcr: int, raised: bool) -> None:
    u, _, lines = make()
    u.write(MCR, 1, mcr)
    u.write(IER, 1, IER_THRI)
    assert u.read(IIR, 1) & 0x0F == IIR_THRI  # pending whatever the gate
    assert ((4, True) in lines.log) == raised


def test_qemu_mode_does_not_gate() -> None:
    u, _, lines = make()
    u.gate_out2 = False
    u.write(IER, 1, IER_THRI)
    assert lines.log == [(4, True)]


@pytest.mark.parametrize("mcr, msr", [(0x10, 0x00), (0x11, 0x20), (0x12, 0x10), (0x14, 0x40), (0x18, 0x80),
                                       (0x1F, 0xF0)])
def test_loopback_modem_status(mcr: int, msr: int) -> None:
    u, _, _ = make()
    u.write(MCR, 1, mcr)
    assert u.read(MSR, 1) == msr


def test_loopback_receive_without_fifo_and_overrun() -> None:
    u, _, _ = make()
    u.write(MCR, 1, MCR_LOOP)
    u.write(IER, 1, IER_RDI | IER_RLSI)
    assert u.native_ok() == (False, False)
    u.write(THR, 1, 0x41)
    assert u.output == b"" and u.read(LSR, 1) & 1 and u.read(IIR, 1) & 0x0F == IIR_RDI
    u.write(THR, 1, 0x42)  # DR still set: overrun
    assert u.read(IIR, 1) & 0x0F == IIR_RLSI  # line status outranks received data
    assert u.read(LSR, 1) & 0x02  # OE, cleared by this read
    assert u.read(LSR, 1) & 0x02 == 0
    assert u.read(THR, 1) == 0x42 and u.read(LSR, 1) == 0x60 and u.read(IIR, 1) & 0x0F == IIR_NONE


def test_fifo_trigger_level_and_character_timeout() -> None:
    u, clock, _ = make()
    u.write(MCR, 1, MCR_LOOP)
    u.write(FCR, 1, 0x41)  # FIFO on, trigger 4
    u.write(IER, 1, IER_RDI)
    for ch in b"abc":
        u.write(THR, 1, ch)
    assert u.read(IIR, 1) & 0x0F == IIR_NONE  # below the trigger level
    deadline = u.next_deadline()
    char = 10 * 12 * HZ // 115_200  # 8N1 at divisor 12
    assert deadline == 4 * char
    clock.t = deadline
    u.advance(deadline)
    assert u.read(IIR, 1) & 0x0F == IIR_CTI
    assert u.read(THR, 1) == ord("a") and u.read(IIR, 1) & 0x0F == IIR_NONE  # a read clears the timeout
    u.write(THR, 1, ord("d"))
    u.write(THR, 1, ord("e"))
    assert u.read(IIR, 1) & 0x0F == IIR_RDI  # 4 bytes: at the trigger level
    u.write(FCR, 1, 0x43)  # receive FIFO reset
    assert u.read(LSR, 1) & 1 == 0 and u.read(IIR, 1) & 0x0F == IIR_NONE


def test_priority_thre_below_data_and_modem_status_lowest() -> None:
    u, _, _ = make()
    u.write(MCR, 1, MCR_LOOP)
    u.write(IER, 1, IER_RDI | IER_THRI | IER_MSI)
    u.write(THR, 1, 1)
    assert u.read(IIR, 1) & 0x0F == IIR_RDI
    u.read(THR, 1)
    assert u.read(IIR, 1) & 0x0F == IIR_THRI


def test_dlab_and_state_round_trip() -> None:
    u, _, _ = make()
    u.write(LCR, 1, 0x83)
    u.write(THR, 1, 1)
    u.write(IER, 1, 0)
    assert u.divisor == 1 and u.native_ok() == (True, False)
    u.write(LCR, 1, 0x03)
    u.write(MCR, 1, MCR_LOOP)
    u.write(THR, 1, 7)
    other, _, _ = make()
    other.load_state(u.save_state())
    assert other.save_state() == u.save_state() and other.read(THR, 1) == 7
    with pytest.raises(ValueError):
        other.load_state({**u.save_state(), "lsr": 256})
