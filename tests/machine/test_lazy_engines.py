"""Issue 19 item 5: a vCPU's engine is built on first use (viridian/machine/unicorn/lazy.py). An AP a kernel never
starts costs no Unicorn instance; every outcome equals the run whose engines were all built up front."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from viridian.config.presets import load_config
from viridian.machine.loader import load_image
from viridian.machine.machine import Machine
from viridian.machine.unicorn.lazy import unbuilt


def _run(guests: Path, name: str, vcpus: int, preset: str, board: str, eager: bool) -> tuple[str, int, str]:
    """(status, engines built, digest of the run's whole outcome)."""
    from viridian.report.run import stats_json

    with Machine(load_config(preset=preset), load_image(guests / name), vcpus=vcpus, board=board,
                 max_ticks=4_000_000_000) as m:
        if eager:
            for v in m.vcpus:
                assert v.uc is not None  # the first access builds it
        res = m.run()
        built = sum(not unbuilt(v) for v in m.vcpus)
        stats = stats_json(m)
        stats.pop("timing", None)
        blob = json.dumps([res.status, res.code, stats, m.T, m.clock.tsc(), m.ports.serial.text()],
                          sort_keys=True, default=str)
    return res.status, built, hashlib.sha256(blob.encode()).hexdigest()


CASES = [  # (guest, vCPUs, preset, board, engines a lazy run builds)
    ("multiboot.elf", 4, "recommended", "minimal", 1),  # a Multiboot kernel that never starts its APs
    ("qemu_conv.elf", 4, "recommended", "pc", 1),  # ditto, on the PC board (I/O APIC, HPET MMIO per engine)
    ("x86_events.elf", 2, "recommended", "minimal", 1),  # the AP is parked for the whole run
    ("conformance.elf", 4, "all", "minimal", 4),  # INIT-SIPI-SIPI starts every AP: each is built at its SIPI
    ("win10.elf", 4, "all", "minimal", 4),  # APs start at the entry point: built at their first run
]


@pytest.mark.parametrize(("name", "vcpus", "preset", "board", "built"), CASES)
def test_engines_are_built_on_first_use_and_change_nothing(guests: Path, name: str, vcpus: int, preset: str,
                                                          board: str, built: int) -> None:
    lazy = _run(guests, name, vcpus, preset, board, eager=False)
    eager = _run(guests, name, vcpus, preset, board, eager=True)
    assert lazy[0] == "exit" and lazy[1] == built and eager[1] == vcpus
    assert lazy[2] == eager[2]  # result, every counter, virtual time, serial output


def test_a_parked_ap_is_cheap_until_its_engine_is_needed(guests: Path) -> None:
    """Before its first run a vCPU has no engine; what the core does to every vCPU (code coherence, TLB
    flushes, overlay pages, the fast-spin flag, clocks) keeps it that way; reading a register builds it and
    the remembered overlay pages apply; closing an unbuilt vCPU builds nothing, and nothing builds one after."""
    m = Machine(load_config(preset="recommended"), load_image(guests / "multiboot.elf"), vcpus=3)
    ap = m.vcpus[2]
    assert unbuilt(ap) and ap.ticks == 0 and ap.pauses == 0
    ap.forget_code()
    ap.forget_physical(0x1000, drop_cache=True)
    ap.flush_tlb()
    ap.set_fast_spin(True)
    ap.set_protected({0x5000})
    assert unbuilt(ap)
    assert ap.read_registers(["rip"])[0] != 0  # built now, in its boot state
    assert not unbuilt(ap) and ap.protected == {0x5000} and ap.native.fast_spin_ok == 1
    m.close()
    m2 = Machine(load_config(preset="recommended"), load_image(guests / "multiboot.elf"), vcpus=2)
    m2.close()
    assert unbuilt(m2.vcpus[1]) and m2.vcpus[1].ticks == 0
    with pytest.raises(AttributeError):  # no engine after the close: it would never be freed
        m2.vcpus[1].read_registers(["rip"])
    assert unbuilt(m2.vcpus[1])
