"""x86 event-delivery semantics on real guest code (fixtures/guests/machine/x86_events.S), each a bug a
third-party x86 test suite found (issue 19): NMI blocking until IRET, the interrupt window re-opened by an exit
handled inside a hook, ..."""

from __future__ import annotations

from pathlib import Path

import pytest

from viridian.config.presets import load_config
from viridian.machine.loader import load_image
from viridian.machine.machine import Machine, RunResult


def run(guests: Path, cmdline: str, preset: str = "none", vcpus: int = 1, **kw: object) -> tuple[Machine, RunResult]:
    m = Machine(load_config(preset=preset), load_image(guests / "x86_events.elf"), cmdline=cmdline, vcpus=vcpus,
                **kw)  # type: ignore[arg-type]
    return m, m.run()


def test_nmi_blocked_until_iret(guests: Path) -> None:
    """SDM vol. 3 §6.7.1: an NMI handler that sends itself two NMIs is not re-entered; one NMI is held and
    taken at the first boundary after its IRETQ (the guest checks the return RIPs), and only one."""
    m, res = run(guests, "n")
    assert (res.status, res.code) == ("exit", 0), (res, m.ports.serial.text())
    assert m.total_stats().events["nmi"] == 2


@pytest.mark.parametrize(("mode", "preset"), [("m", "none"), ("x", "none"), ("h", "all")])
def test_window_reopened_by_an_eoi_in_a_hook(guests: Path, mode: str, preset: str) -> None:
    """An EOI with IF = 0 (xAPIC MMIO, x2APIC MSR, HV_X64_MSR_EOI) unmasks a lower vector: it is delivered
    at the first boundary after the handler's IRETQ, not left in IRR across the main code's CLI."""
    m, res = run(guests, "w" + mode, preset)
    assert (res.status, res.code) == ("exit", 0), (res, m.ports.serial.text())


def test_mov_ss_shadow(guests: Path) -> None:
    """SDM vol. 3 §6.8.3: no interrupt is taken right after MOV SS. A one-shot timer re-armed with varying
    counts interrupts a stream of `mov ss, cx; nop` pairs ~120 times; none lands on a nop (without the shadow,
    about half did), and each shadowed boundary asked for the interrupt window instead."""
    m, res = run(guests, "s")
    assert (res.status, res.code) == ("exit", 0), (res, m.ports.serial.text())
    ticks = int(m.ports.serial.text().split("stream ticks=")[1].split()[0])
    assert ticks >= 100
    assert m.total_stats().by_reason["interrupt_window"] >= ticks // 4


def test_gate_code_segment_checks(guests: Path) -> None:
    """SDM vol. 2A "INT n" (IA-32e mode), vol. 3 §6.12.1.1: a gate whose selector is null -> #GP(0); outside
    the GDT, a data segment, 32-bit code or DPL-3 code -> #GP(selector); a not-present code segment ->
    #NP(selector), with EXT set when an interrupt (a self-IPI) met it; an RPL-3 selector of the kernel code
    segment delivers at DPL 0. The guest checks each vector and error code exactly."""
    m, res = run(guests, "g")
    assert (res.status, res.code) == ("exit", 0), (res, m.ports.serial.text())
    assert m.ports.serial.text().endswith("gates ok\n")


@pytest.mark.parametrize("pcpus", [None, 1])
def test_ipi_to_a_waiting_vcpu_ends_the_senders_slice(guests: Path, pcpus: int | None) -> None:
    """An NMI to a vCPU waiting for a CPU (halted, or behind the sender on one CPU) ends the sender's run soon
    and the target runs first next (KVM kicks it): a 1,000-round NMI ping-pong costs a few thousand ticks a
    round, not a 200,000-tick quantum or two -- so 100,000 rounds fit the default budget (2e10 ticks)."""
    m, res = run(guests, "p3", vcpus=2, pcpus=pcpus)
    assert (res.status, res.code) == ("exit", 0), (res, m.ports.serial.text())
    assert "rounds=1000" in m.ports.serial.text()
    per_round = m.clock.tsc() // 1000
    assert per_round <= 10_000, per_round
    assert 100_000 * per_round < m.max_ticks


@pytest.mark.parametrize("preset", ["none", "all"])
def test_apic_base_relocation_and_the_disabled_apic(guests: Path, preset: str) -> None:
    """SDM vol. 3 §10.4.3-§10.4.5: with IA32_APIC_BASE[11] = 0 CPUID.1:EDX[9] reads 0 and the xAPIC page is
    memory-like (KVM: all-ones, then what was written -- kvm-unit-tests verify_disabled_apic_mmio); enabled at
    a new base the APIC answers there and the old page is unassigned (all-ones); moving back works too."""
    m, res = run(guests, "a", preset)
    assert (res.status, res.code) == ("exit", 0), (res, m.ports.serial.text())
    assert m.vcpus[0].apic_page == 0xFEE0_0000
    assert m.total_stats().events["apic_base_not_mapped"] == 0
