"""Hostile guests on the machine (issue 8 part 2): every answer is the TLFS one and the run stays responsive --
budgets end it cleanly ("timeout"), host memory stays bounded, nothing hangs the host."""

from __future__ import annotations

from pathlib import Path

import pytest

from viridian.config.presets import load_config
from viridian.machine.loader import load_image
from viridian.machine.machine import Machine
from viridian.machine.negotiation import MAX_DISTINCT


def test_page_msrs_at_one_page_the_apic_and_past_ram(guests: Path) -> None:
    """HYPERCALL and VP_ASSIST_PAGE #GP when their page is not RAM (KVM: kvm_write_guest / gfn_to_hva fail);
    REFERENCE_TSC, SIMP and SIEFP accept any GPA (TLFS: a page outside the GPA space is just inaccessible; KVM
    #GPs SIMP/SIEFP there -- we follow the TLFS). All five on one page: accepted, the guest's own mess."""
    m = Machine(load_config(preset="recommended"), load_image(guests / "hostile_pages.elf"), mem_mib=128)
    res = m.run()
    assert (res.status, res.code) == ("exit", 0), res
    lines = m.ports.serial.text().splitlines()
    assert lines[0].startswith("round 1: faults=0 ") and lines[3].startswith("round 4: faults=0 ")
    apic, past = lines[1].split(), lines[2].split()
    assert apic[2] == "faults=2" and apic[4] == apic[7] == "0xfee00001" and apic[3] == apic[5]  # HC, assist kept
    assert past[2] == "faults=2" and past[4] == past[6] == past[7] == hex((128 << 20) + 0x100000 | 1)
    assert m.total_stats().exceptions[13] == 4 + 4  # 2 + 2 WRMSRs, and the 4 calls into an overwritten page


@pytest.mark.parametrize(("mode", "preset"), [("i", "none"), ("t", "none"), ("s", "all"), ("c", "none")])
def test_endless_guests_end_at_their_budget(guests: Path, mode: str, preset: str) -> None:
    """A self-IPI storm, a timer with period 1, a synthetic timer with period 100 ns plus a PostMessage flood,
    and a spin with IF = 0 over a pending interrupt: each ends "timeout" at the virtual-time budget."""
    m = Machine(load_config(preset=preset), load_image(guests / "hostile_loops.elf"), cmdline=mode,
                max_ticks=20_000_000)
    res = m.run()
    assert res.status == "timeout", res
    # the host's work is bounded by virtual time, not by how hostile the guest is: every exit costs 1000 ticks,
    # and an interrupt-window exit (counted, not charged) comes with at most one of them
    assert m.total_stats().total <= 2 * (m.vcpu_count * 20_000_000 // 1000 + m.vcpu_count)
    assert m.clock.tsc() >= 20_000_000
    assert sum(vp.synic.queued for vp in m.partition.vps) <= 16 * 16  # bounded queues
    assert len(m.neg.first) <= MAX_DISTINCT
    if mode == "s":
        assert m.total_stats().hypercalls[0x005C] > 1000  # the flood ran and was answered
