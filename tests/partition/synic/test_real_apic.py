"""SynIC against the real local APIC model: IRR/ISR effects, the EOI and auto-EOI hooks the machine calls."""

from __future__ import annotations

import pytest
from synic_harness import VEC, make

from viridian.partition.message_queue import SynicMessage
from viridian.tlfs.msrs import stimer_config_msr, stimer_count_msr

pytest.importorskip("viridian.devices.lapic", reason="local APIC model not importable yet")


def test_message_interrupt_eoi_redelivery() -> None:
    rig = make(real_apic=True)
    apic, synic = rig.apics[0], rig.part.vps[0].synic
    rig.enable()
    rig.sint(1)
    synic.post_message(1, SynicMessage(1, b"a"))
    synic.post_message(1, SynicMessage(2, b"b"))
    assert apic.irr_vectors() == [VEC]
    assert apic.acknowledge() == VEC
    rig.consume(1, eom=False)  # guest reads the slot, does not EOM; the EOI rescans
    apic.eoi()
    synic.on_eoi(VEC)  # machine: after any EOI of a vector, tell the SynIC
    assert rig.slot_header(1)[0] == 2
    assert apic.irr_vectors() == [VEC]


def test_auto_eoi_acknowledge_flow() -> None:
    rig = make(real_apic=True)
    apic, synic = rig.apics[0], rig.part.vps[0].synic
    rig.enable()
    rig.sint(0, 0x50, auto_eoi=True)
    synic.post_message(0, SynicMessage(1, b""))
    vector = apic.acknowledge()
    if synic.is_auto_eoi(vector):  # machine at INTA: retire at once and notify the SynIC
        apic.eoi()
        synic.on_eoi(vector)
    assert apic.isr_vectors() == []


def test_software_disabled_apic_drops_sint_interrupt_but_keeps_message() -> None:
    rig = make(real_apic=True)
    from msr.apic import APIC_SVR

    rig.apics[0].write_register(APIC_SVR, 0xFF)
    rig.enable()
    rig.sint(0)
    rig.part.vps[0].synic.post_message(0, SynicMessage(1, b""))
    assert rig.apics[0].irr_vectors() == []
    assert rig.slot_header(0)[0] == 1


def test_direct_timer_lands_in_irr() -> None:
    rig = make(real_apic=True)
    rig.enable()
    now = rig.now()
    rig.ok(stimer_config_msr(0), 1 << 3 | 1 << 12 | 0xC0 << 4)
    rig.ok(stimer_count_msr(0), now + 100)
    rig.advance(100)
    rig.poll()
    assert rig.apics[0].irr_vectors() == [0xC0]
