"""8259A pair from the Intel 8259A data sheet: ICW1-4, OCW1-3 (IRR/ISR reads, poll), fully nested priority,
AEOI, specific/non-specific EOI, rotation, special mask mode, spurious IRQ 7/15, cascade on IR2, ELCR (engine-free)."""

from __future__ import annotations

import pytest

from viridian.devices.pic import PicPair


def linux_init(aeoi: bool = False) -> PicPair:
    """Linux init_8259A: bases 0x30/0x38, cascade, 8086 mode (+AEOI), everything unmasked for the tests."""
    pic = PicPair()
    for port, v in ((0x21, 0xFF), (0x20, 0x11), (0x21, 0x30), (0x21, 0x04), (0x21, 0x03 if aeoi else 0x01),
                    (0xA0, 0x11), (0xA1, 0x38), (0xA1, 0x02), (0xA1, 0x01), (0x21, 0x00), (0xA1, 0x00)):
        pic.write(port, 1, v)
    return pic


def pulse(pic: PicPair, irq: int) -> None:
    pic.set_irq(irq, True)
    pic.set_irq(irq, False)


def test_handoff_state_is_initialised_and_masked() -> None:
    pic = PicPair()
    pic.bios_init()
    assert pic.read(0x21, 1) == 0xFF and pic.read(0xA1, 1) == 0xFF
    pulse(pic, 0)
    assert not pic.intr
    assert pic.read(0x20, 1) == 0x01  # IRR latches even while masked (data sheet: IMR acts after IRR)


def test_linux_probe_imr_reads_back() -> None:
    pic = PicPair()
    pic.bios_init()
    pic.write(0xA1, 1, 0xFF)
    pic.write(0x21, 1, 0xFB)
    assert pic.read(0x21, 1) == 0xFB


# (lines raised, expected vectors in INTA order with a non-specific EOI after each)
PRIORITY = [
    ([3, 1], [0x31, 0x33]),  # IR0 highest, IR7 lowest (fully nested)
    ([9, 4], [0x39, 0x34]),  # slave lines sit at master IR2's priority
    ([12, 8], [0x38, 0x3C]),
]


@pytest.mark.parametrize(("lines", "vectors"), PRIORITY)
def test_fully_nested_priority(lines: list[int], vectors: list[int]) -> None:
    pic = linux_init()
    for irq in lines:
        pulse(pic, irq)
    got = []
    for _ in vectors:
        assert pic.intr
        v = pic.inta()
        got.append(v)
        if v >= 0x38:
            pic.write(0xA0, 1, 0x20)
        pic.write(0x20, 1, 0x20)
    assert got == vectors and not pic.intr


def test_in_service_blocks_lower_and_equal_priority() -> None:
    pic = linux_init()
    pulse(pic, 3)
    assert pic.inta() == 0x33
    pulse(pic, 5)
    assert not pic.intr  # IR5 waits behind IR3 in service
    pulse(pic, 1)
    assert pic.intr and pic.inta() == 0x31  # higher priority nests
    pic.write(0x20, 1, 0x0B)
    assert pic.read(0x20, 1) == 0x0A  # ISR: IR1 and IR3
    pic.write(0x20, 1, 0x61)  # specific EOI IR1
    pic.write(0x20, 1, 0x63)
    assert pic.inta() == 0x35


def test_spurious_irq7_and_irq15() -> None:
    pic = linux_init()
    assert pic.inta() == 0x37  # nothing pending: base + 7, no ISR bit
    pic.write(0x20, 1, 0x0B)
    assert pic.read(0x20, 1) == 0
    pic.write(0x4D1, 1, 0x02)  # IRQ 9 level
    pic.set_irq(9, True)
    assert pic.intr
    pic.set_irq(9, False)  # the request goes away before INTA: the master saw IR2, the slave has nothing
    assert pic.inta() == 0x3F  # spurious IRQ 15 (slave base + 7)


def test_level_request_from_slave_asks_again_until_its_line_drops() -> None:
    pic = linux_init()
    pic.write(0x4D1, 1, 0x02)
    pic.set_irq(9, True)
    assert pic.inta() == 0x39
    pic.write(0xA0, 1, 0x20)
    pic.write(0x20, 1, 0x20)
    assert pic.intr  # a level line still high asks again
    pic.set_irq(9, False)  # dropped after the master latched IR2 again: that request ends as IRQ 15
    assert pic.inta() == 0x3F
    pic.write(0x20, 1, 0x20)
    assert not pic.intr


def test_auto_eoi_sets_no_isr_bit() -> None:
    pic = linux_init(aeoi=True)
    pulse(pic, 0)
    assert pic.inta() == 0x30
    pic.write(0x20, 1, 0x0B)
    assert pic.read(0x20, 1) == 0
    pulse(pic, 0)
    assert pic.intr


def test_rotate_on_non_specific_eoi_makes_serviced_line_lowest() -> None:
    pic = linux_init()
    pulse(pic, 2 + 1)  # IR3
    assert pic.inta() == 0x33
    pic.write(0x20, 1, 0xA0)  # rotate on non-specific EOI: IR3 lowest, IR4 highest
    pulse(pic, 1)
    pulse(pic, 5)
    assert pic.inta() == 0x35


def test_set_priority_command() -> None:
    pic = linux_init()
    pic.write(0x20, 1, 0xC0 | 4)  # IR4 lowest -> IR5 highest
    pulse(pic, 0)
    pulse(pic, 6)
    assert pic.inta() == 0x36


def test_special_mask_mode_lets_lower_lines_through() -> None:
    pic = linux_init()
    pulse(pic, 1)
    assert pic.inta() == 0x31
    pic.write(0x21, 1, 0x02)  # mask the in-service IR1
    pic.write(0x20, 1, 0x68)  # OCW3: set special mask mode
    pulse(pic, 4)
    assert pic.intr and pic.inta() == 0x34
    pic.write(0x20, 1, 0x48)  # reset special mask mode


def test_poll_command() -> None:
    pic = linux_init()
    pic.write(0x20, 1, 0x0C)
    assert pic.read(0x20, 1) == 0  # nothing pending (QEMU answers 0)
    pulse(pic, 6)
    pic.write(0x20, 1, 0x0C)
    assert pic.read(0x20, 1) == 0x86
    pic.write(0x20, 1, 0x0B)
    assert pic.read(0x20, 1) == 0x40  # acknowledged: in service


def test_elcr_masks_fixed_edge_lines() -> None:
    pic = PicPair()
    pic.write(0x4D0, 1, 0xFF)
    pic.write(0x4D1, 1, 0xFF)
    assert pic.read(0x4D0, 1) == 0xF8 and pic.read(0x4D1, 1) == 0xDE


def test_edge_needs_a_new_rising_edge() -> None:
    pic = linux_init()
    pic.set_irq(4, True)
    assert pic.inta() == 0x34
    pic.write(0x20, 1, 0x20)
    assert not pic.intr  # still high, but an edge input latched it once
    pic.set_irq(4, False)
    pic.set_irq(4, True)
    assert pic.intr


def test_state_round_trip() -> None:
    pic = linux_init()
    pulse(pic, 5)
    state = pic.save_state()
    other = PicPair()
    other.load_state(state)
    assert other.save_state() == state and other.inta() == 0x35
    with pytest.raises(ValueError):
        other.load_state({"master": state["master"], "slave": dict(state["slave"], base=999), "intr": True})
