"""ACPI PM block (viridian.devices.pm_timer) from ACPI 6.5 §4.8.3: the 3.579545 MHz counter from virtual time,
24/32-bit wrap, TMR_STS on every top-bit change, write-1-to-clear status, enables, SCI level on IRQ 9, the
deadline of the next SCI, SLP_EN, byte-composed accesses, snapshots."""

from __future__ import annotations

import pytest
from device_harness import Clock, Lines

from viridian.devices.pm_timer import (
    PM_BASE,
    PM_TIMER_HZ,
    SCI_EN,
    SCI_IRQ,
    SLP_EN,
    TMR_EN,
    TMR_STS,
    AcpiPm,
)

HZ = 2_000_000_000
STS, EN, CNT, TMR = PM_BASE, PM_BASE + 2, PM_BASE + 4, PM_BASE + 8


def make(ext: bool = False) -> tuple[AcpiPm, Clock, Lines]:
    clock, lines = Clock(), Lines()
    return AcpiPm(clock, HZ, irq=lines, ext=ext), clock, lines


@pytest.mark.parametrize("tsc, count", [
    (0, 0), (558, 0), (559, 1),  # 1 PM tick = 558.73 TSC ticks at 2 GHz
    (HZ, PM_TIMER_HZ), (HZ // 1000, 3579), (7 * HZ, 7 * PM_TIMER_HZ % (1 << 24)),
])
def test_counter_is_exact_floor_of_virtual_time(tsc: int, count: int) -> None:
    pm, clock, _ = make()
    clock.t = tsc
    assert pm.read(TMR, 4) == count


@pytest.mark.parametrize("ext, mask", [(False, (1 << 24) - 1), (True, (1 << 32) - 1)])
def test_width_follows_tmr_val_ext(ext: bool, mask: int) -> None:
    pm, clock, _ = make(ext)
    clock.t = 2000 * HZ  # 7.159e9 ticks: past both 2^24 and 2^32
    assert pm.read(TMR, 4) == (2000 * PM_TIMER_HZ) & mask


def test_byte_reads_compose_and_writes_are_ignored() -> None:
    pm, clock, _ = make()
    clock.t = 3 * HZ
    full = pm.read(TMR, 4)
    assert [pm.read(TMR + i, 1) for i in range(4)] == [(full >> (8 * i)) & 0xFF for i in range(4)]
    pm.write(TMR, 4, 0)
    assert pm.read(TMR, 4) == full
    assert pm.read(PM_BASE + 6, 2) == 0xFFFF  # not a register of the block


def test_tmr_sts_sets_on_each_top_bit_change_and_clears_by_writing_one() -> None:
    pm, clock, lines = make()
    half = 1 << 23
    clock.t = (half - 1) * HZ // PM_TIMER_HZ
    assert pm.read(STS, 2) & TMR_STS == 0
    clock.t = -(-half * HZ // PM_TIMER_HZ)  # first tick of count 2^23: bit 23 0 -> 1
    assert pm.read(STS, 2) & TMR_STS
    pm.write(STS, 2, 0)  # writing 0 clears nothing
    assert pm.read(STS, 2) & TMR_STS
    pm.write(STS, 2, TMR_STS)
    assert pm.read(STS, 2) & TMR_STS == 0
    clock.t = -(-(2 * half) * HZ // PM_TIMER_HZ)  # bit 23 1 -> 0 (the 24-bit wrap)
    assert pm.read(STS, 2) & TMR_STS
    assert lines.log == []  # TMR_EN clear: status only, no SCI


def test_sci_is_level_while_status_and_enable() -> None:
    pm, clock, lines = make()
    assert pm.read(CNT, 2) & SCI_EN  # always in ACPI mode (no SMI_CMD)
    pm.write(EN, 2, TMR_EN)
    deadline = pm.next_deadline()
    assert deadline == -(-(1 << 23) * HZ // PM_TIMER_HZ)
    clock.t = deadline - 1
    pm.advance(clock.t)
    assert lines.log == []
    clock.t = deadline
    pm.advance(clock.t)
    assert lines.log == [(SCI_IRQ, True)] and pm.next_deadline() is None
    pm.write(EN, 2, 0)  # masking the enable drops the SCI
    pm.write(EN, 2, TMR_EN)
    pm.write(STS, 2, TMR_STS)  # clearing the status drops it
    assert lines.log == [(SCI_IRQ, True), (SCI_IRQ, False), (SCI_IRQ, True), (SCI_IRQ, False)]
    assert pm.next_deadline() == -(-(1 << 24) * HZ // PM_TIMER_HZ)


def test_sci_en_is_hardware_owned_and_slp_en_calls_sleep() -> None:
    calls: list[int] = []
    clock = Clock()
    pm = AcpiPm(clock, HZ, sleep=calls.append)
    pm.write(CNT, 2, 0)
    assert pm.read(CNT, 2) == SCI_EN
    pm.write(CNT, 2, 5 << 10)
    assert calls == [] and pm.read(CNT, 2) == SCI_EN | 5 << 10
    pm.write(CNT, 2, 5 << 10 | SLP_EN)
    assert calls == [5] and not pm.read(CNT, 2) & SLP_EN  # SLP_EN is write-only


def test_state_round_trips_and_rejects_garbage() -> None:
    pm, clock, _ = make()
    pm.write(EN, 2, TMR_EN)
    clock.t = 5 * HZ
    pm.read(STS, 2)
    other, _, _ = make()
    other.load_state(pm.save_state())
    assert other.save_state() == pm.save_state()
    for bad in ({**pm.save_state(), "sts": -1}, {**pm.save_state(), "en": 1 << 3},
                {**pm.save_state(), "sci": 1}, {}):
        with pytest.raises(ValueError):
            other.load_state(bad)
