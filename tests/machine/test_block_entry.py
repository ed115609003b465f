"""Block entry without a block hook (csrc/block_entry.c): every translation block of a vCPU starts in
vn_tb_enter instead of the engine's exit-request check. It must be active on the pinned engine, count exactly
what the block hook counted, and fall back to the block hook when a block does not look as expected."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from viridian.config.presets import load_config
from viridian.machine.loader import load_image
from viridian.machine.machine import Machine
from viridian.machine.unicorn import store_watch
from viridian.machine.unicorn.native import library
from viridian.report.run import stats_json


def _run(path: Path, vcpus: int) -> tuple[Machine, dict[str, Any]]:
    m = Machine(load_config(preset="recommended"), load_image(path), vcpus=vcpus, max_ticks=4_000_000_000)
    m.run()
    return m, stats_json(m)


def _observable(m: Machine, s: dict[str, Any]) -> dict[str, Any]:
    """What a run shows: result, exits, serial, and each vCPU's clock and block count."""
    keep = {k: s[k] for k in ("result", "exits", "apic", "serial", "time")}
    keep["clocks"] = [(int(v.native.bytes), int(v.native.blocks)) for v in m.vcpus]
    return keep


def test_blocks_enter_natively_on_this_engine_build(guests: Path) -> None:
    m, s = _run(guests / "hello.elf", 4)
    assert (s["result"]["status"], s["result"]["code"]) == ("exit", 0)
    assert store_watch.TB_ENTRY is not None
    for v in m.vcpus:
        assert v.native.tb_patch == 1 and v.native.tb_patched > 0
        assert not v.block_hooked and not v.stats.events.get("tb_patch_failed")


@pytest.mark.parametrize("vcpus", [1, 2])
@pytest.mark.parametrize("guest", ["hello.elf", "apic_timer.elf", "jit.elf", "smc.elf", "exceptions.elf",
                                   "ipi.elf", "idle.elf", "stimer.elf", "win7.elf", "sipi.elf"])
def test_block_entry_counts_what_the_block_hook_counts(guests: Path, guest: str, vcpus: int,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    native = _observable(*_run(guests / guest, vcpus))
    monkeypatch.setenv(store_watch.TB_ENTRY_ENV, "1")
    m, s = _run(guests / guest, vcpus)
    assert all(v.block_hooked for v in m.vcpus)
    assert _observable(m, s) == native


@pytest.fixture
def broken_layout() -> Iterator[None]:
    """Make the next block look unexpected (block_entry.c checks where the block's call returns to)."""
    shift = library().vn_tb_entry_shift
    shift.argtypes, shift.restype = [ctypes.c_int64], ctypes.c_uint64
    shift(8)
    try:
        yield
    finally:
        shift(-8)


def test_a_block_that_cannot_be_patched_falls_back_to_the_block_hook(guests: Path, broken_layout: None,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    m, s = _run(guests / "hello.elf", 2)
    assert (s["result"]["status"], s["result"]["code"]) == ("exit", 0), s["result"]
    assert all(v.block_hooked and v.stats.events["tb_patch_failed"] == 1 for v in m.vcpus)
    monkeypatch.setenv(store_watch.TB_ENTRY_ENV, "1")
    ref = _run(guests / "hello.elf", 2)
    got, want = _observable(m, s), _observable(*ref)
    assert got["serial"] == want["serial"] and got["result"] == want["result"]
    assert got["exits"]["by_reason"] == want["exits"]["by_reason"]


def test_accesses_translate_without_exit_checks_on_this_engine_build(guests: Path) -> None:
    m, s = _run(guests / "hello.elf", 2)
    assert store_watch.QUIET_LOADS and store_watch.precise_write_protect() and s["result"]["status"] == "exit"
    assert all(v.native.quiet_accesses > 0 for v in m.vcpus)


@pytest.mark.parametrize("guest", ["hello.elf", "apic_timer.elf", "jit.elf", "smc.elf", "exceptions.elf",
                                   "ipi.elf", "idle.elf", "stimer.elf", "win7.elf", "hostile_pages.elf"])
def test_accesses_without_exit_checks_change_nothing_but_block_ends(guests: Path, guest: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing needs the engine to stop right after a guest access (engine_watch.c, vn_gen_ld_i32): the same
    exits, interrupts and output. Clocks may differ where a block ends: a store into watched code (jit, smc)
    stops its writer at the store, which then runs again (with the checks: right after it, the rest of the
    block running again); and the translator ends a block when its op buffer is full, which the checks fill
    sooner (a block of ~500 load-and-store instructions: hostile_pages runs an overwritten hypercall stub)."""
    quiet = _observable(*_run(guests / guest, 2))
    monkeypatch.setenv(store_watch.QUIET_ENV, "1")
    m, s = _run(guests / guest, 2)
    assert not any(v.native.quiet_accesses for v in m.vcpus)
    checked = _observable(m, s)
    if guest in ("jit.elf", "smc.elf", "hostile_pages.elf"):
        for o in (quiet, checked):
            del o["clocks"], o["time"]
    assert checked == quiet


def test_translation_filter_index_finds_what_the_walk_finds(guests: Path) -> None:
    """engine_watch.c: the translation filter looks hooks up in a sorted index of the engine's code-hook list;
    for every page the guest ran on (and its neighbours), it finds the same hooks in the same order."""
    from unicorn import UC_HOOK_CODE

    from viridian.machine.unicorn import engine as E

    m, _ = _run(guests / "conformance.elf", 1)
    v = m.vcpus[0]
    lib = library()
    # a hook for every address, and a wide one, besides the site hooks
    E.hook_add_native(v.uc, UC_HOOK_CODE, v.site_fn, 0, 1, 0)
    E.hook_add_native(v.uc, UC_HOOK_CODE, v.site_fn, 0, 0x100000, 0x180000)
    pages = sorted({va for vas in v.code_vas.values() for va in vas} | {site & ~0xFFF for site in v.sites})
    assert len(v.sites) > 10 and pages
    for page in pages:
        for lo in (page - 0x1000, page, page + 0x1000):
            assert lib.vn_filter_selftest(ctypes.byref(v.native), ctypes.c_uint64(lo)) == 1, hex(lo)
    assert v.native.hix_rebuilds > 0 and v.native.hix_n >= len(v.sites)
