"""Virtual time and exits do not depend on the engine's fast paths (viridian/machine/unicorn/engine_build.py).

Every fast path with a fallback can be forced off (``VIRIDIAN_DISABLE``); a guest must then give exactly the
same result, exits (by reason, MSR, hypercall, port, exception), serial output, partition time and per-vCPU
clocks as with every fast path on. ``make test`` runs a representative slice; ``make fastpath-matrix``
(``VIRIDIAN_FASTPATH_MATRIX=1``) runs every fixture guest at 1, 2 and 4 vCPUs against every fast path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from viridian.config.presets import load_config
from viridian.machine.loader import load_image
from viridian.machine.machine import Machine
from viridian.machine.unicorn import engine_build
from viridian.report.run import stats_json

# Guests whose defaults run forever or need a command line, and bounds that keep each run short
CMDLINES = {"hostile_loops.elf": "c", "lab.elf": "exp=eoi n=20 apic=xapic eoi=xapic", "fuzz_ops.elf": "7",
            "linux.elf": "ticks=20", "win7.elf": "ticks=20", "win8.elf": "ticks=20", "win10.elf": "ticks=20",
            "ws2008.elf": "ticks=20"}
MAX_TICKS = {"hostile_loops.elf": 30_000_000, "loop_alu.elf": 400_000_000}
PC_BOARD = {"hpet.elf", "ioapic.elf", "ioapic_smp.elf", "pc_reset.elf", "pic_pit.elf", "pit_calibrate.elf",
            "pm_timer.elf", "rtc_irq.elf", "uart_irq.elf"}  # guests of the PC platform (--machine pc)
SKIP = {"initramfs"}  # not a fixture guest of the machine (a Linux user program)
FULL = os.environ.get("VIRIDIAN_FASTPATH_MATRIX", "") not in ("", "0")
BUILD = Path(__file__).resolve().parents[2] / "fixtures" / "build"


def observable(guest: Path, vcpus: int) -> dict[str, Any]:
    """What a run shows: result, every exit count, serial output, time, each vCPU's clock."""
    name = guest.name
    m = Machine(load_config(preset="recommended"), load_image(guest), vcpus=vcpus,
                max_ticks=MAX_TICKS.get(name, 4_000_000_000), cmdline=CMDLINES.get(name, ""),
                board="pc" if name in PC_BOARD else "minimal")
    m.run()
    s = stats_json(m)
    exits = dict(s["exits"])
    exits.pop("events", None)  # not exits: which fast path did the work (e.g. tb_patch counts)
    return {"result": s["result"], "exits": exits, "apic": s["apic"], "serial": s["serial"], "time": s["time"],
            "clocks": [int(v.native.bytes) for v in m.vcpus], "pauses": [v.pauses for v in m.vcpus]}


def _guests() -> list[str]:
    names = sorted(p.name for p in BUILD.glob("*.elf") if p.stem not in SKIP) if FULL else []
    return names or ["conformance.elf", "hello.elf", "jit.elf", "smc.elf", "hostile_pages.elf", "apic_timer.elf"]


PATHS = [*engine_build.FAST_PATHS, "all"]
SLICE = [("conformance.elf", 4, p) for p in PATHS] + [
    ("conformance.elf", 1, "store_watch"), ("conformance.elf", 2, "all"), ("smc.elf", 2, "store_watch"),
    ("ioapic_smp.elf", 4, "quiet_ple"),  # pause-loop exits counted in C beside PC device deadlines (quiet_ple.py)
    ("jit.elf", 2, "all"), ("apic_timer.elf", 1, "all"), ("hello.elf", 4, "all"),
    # a code hook drops the running page's translations, then a block-start stop (csrc/vcpu_native.c tb_enter_slow)
    ("hostile_pages.elf", 1, "block_entry"), ("hostile_pages.elf", 1, "store_watch"), ("hostile_pages.elf", 1, "all")]

CASES = [(g, n, p) for g in _guests() for n in (1, 2, 4) for p in PATHS] if FULL else SLICE
_reference: dict[tuple[str, int], dict[str, Any]] = {}


@pytest.mark.parametrize(("guest", "vcpus", "path"), CASES)
def test_a_fast_path_forced_off_changes_nothing_the_guest_or_the_stats_see(
        guests: Path, guest: str, vcpus: int, path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(engine_build.DISABLE_ENV, raising=False)
    key = (guest, vcpus)
    if key not in _reference:
        _reference[key] = observable(guests / guest, vcpus)
    want = _reference[key]
    monkeypatch.setenv(engine_build.DISABLE_ENV, path)
    got = observable(guests / guest, vcpus)
    for field in want:
        assert got[field] == want[field], f"{guest} x{vcpus} with {path} off: {field} differs"


def test_forcing_paths_off_is_seen_by_the_machine(guests: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The switch reaches the engine: with everything off there is no block entry, no native answers."""
    monkeypatch.setenv(engine_build.DISABLE_ENV, "all")
    m = Machine(load_config(preset="recommended"), load_image(guests / "hello.elf"), vcpus=2)
    m.run()
    for v in m.vcpus:
        n = v.native
        assert not n.tb_patch and v.block_hooked and not n.pause_native and not n.quiet_accesses
        assert not (v.native_tsc_on or v.native_msr_on or n.com1_base)
    assert engine_build.active_fast_paths() == []


def test_an_unknown_fast_path_name_is_one_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from viridian.errors import UserError

    monkeypatch.setenv(engine_build.DISABLE_ENV, "store_watch,warp_drive")
    with pytest.raises(UserError, match="unknown fast path 'warp_drive'"):
        engine_build.disabled()
