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


# -- an unbuilt AP after the guest rewrote the loader's tables (the engine is built from the captured boot state) --
_REGS = ("rip", "rsp", "rflags", "rax", "rcx", "rdx", "rbx", "rsi", "rdi", "cs", "ss", "ds", "es", "fs", "gs",
         "cr0", "cr2", "cr3", "cr4")


def _answer(m: Machine, query: str) -> object:
    """One query on vCPU 1, as the CLI/snapshot/gdb/trace code asks it."""
    from viridian.machine.snapshot_state import save_sections
    from viridian.machine.unicorn.debug import Debugger
    from viridian.machine.unicorn.engine import context_bytes
    from viridian.report.run import stats_json
    from viridian.state import StateError

    ap = m.vcpus[1]
    if query == "clock":
        return ap.clock_state()
    if query == "stats":
        stats = stats_json(m)
        stats.pop("timing", None)
        return json.dumps(stats, sort_keys=True, default=str)
    if query == "registers":
        return ap.read_registers(_REGS)
    if query == "snapshot":  # (refused when the guest's GDT says CS is 32-bit code: case 'd', either way)
        try:
            return [(name, hashlib.sha256(bytes(value)).hexdigest()) for name, value in save_sections(m)]
        except StateError as exc:
            return str(exc)
    if query == "gdb":
        dbg = Debugger(m, "127.0.0.1:0")
        try:
            return dbg.read_registers(2).hex()
        finally:
            dbg.listener.close()
    assert query == "engine"  # the whole CPU state Unicorn would save (past its 32-byte header: a pointer)
    return bytes(context_bytes(ap.uc)[1][32:]).hex()


QUERIES = ("clock", "stats", "registers", "snapshot", "gdb", "engine")


def _hostile(guests: Path, case: str, eager: bool) -> tuple[Machine, str]:
    import io

    from viridian.machine.trace import Tracer

    out = io.StringIO()
    m = Machine(load_config(preset="recommended"), load_image(guests / "hostile_arch.elf"), cmdline=case, vcpus=2,
                tracer=Tracer(out, False))
    if eager:
        for v in m.vcpus:
            assert v.uc is not None
    assert m.run().status == "triple-fault"
    return m, out.getvalue()


@pytest.mark.parametrize("case", ["o", "d"])  # the BSP overlays the page of its PML4 (o) / its GDT (d), then dies
@pytest.mark.parametrize("query", QUERIES)
def test_a_query_on_an_unbuilt_ap_after_the_guest_rewrote_its_tables(guests: Path, case: str, query: str) -> None:
    """The AP never ran, so its engine is first built by the query (or the next one) -- from the boot state captured when it was
    constructed, never through the guest's current GDT/page tables (which crashed the host: 'o', or raised
    UcError: 'd'). Every answer, the trace, and RAM equal those of the run whose engines were built up front."""
    lazy, lazy_trace = _hostile(guests, case, eager=False)
    eager, eager_trace = _hostile(guests, case, eager=True)
    assert unbuilt(lazy.vcpus[1])
    assert _answer(lazy, query) == _answer(eager, query)  # the first touch (all but "stats" build the engine)
    for other in QUERIES:
        assert _answer(lazy, other) == _answer(eager, other), other
    assert lazy_trace == eager_trace
    assert bytes(lazy.ram_buffer) == bytes(eager.ram_buffer)  # the build wrote nothing into guest memory
    lazy.close()
    eager.close()


def _sipi_run(guests: Path, eager: bool) -> tuple[str, int, str]:
    """conformance.elf 'all' on 2 vCPUs (the AP waits for INIT-SIPI-SIPI) with the AP's boot GDT overwritten
    before the run (as a kernel reusing the loader's low memory would): (status, engines built, digest)."""
    from viridian.machine import layout as L
    from viridian.report.run import stats_json

    with Machine(load_config(preset="all"), load_image(guests / "conformance.elf"), vcpus=2, ap_start="sipi",
                 max_ticks=4_000_000_000) as m:
        if eager:
            for v in m.vcpus:
                assert v.uc is not None
        gdt = L.gdt_address(1)
        m.ram[gdt : gdt + L.GDT_STRIDE] = bytes(L.GDT_STRIDE)  # every descriptor: not present
        res = m.run()
        built = sum(not unbuilt(v) for v in m.vcpus)
        stats = stats_json(m)
        stats.pop("timing", None)
        blob = json.dumps([res.status, res.code, stats, m.T, m.clock.tsc(), m.ports.serial.text()],
                          sort_keys=True, default=str)
        return res.status, built, hashlib.sha256(blob.encode() + bytes(m.ram_buffer)).hexdigest()


def test_a_sipi_after_the_loader_gdt_was_reused_starts_the_ap_as_an_eager_build_would(guests: Path) -> None:
    """The AP's engine is built at its SIPI, long after its boot GDT was overwritten: built from the captured
    boot state (not the garbage: a UcError before), the run -- RAM included -- equals the eager one."""
    lazy = _sipi_run(guests, eager=False)
    eager = _sipi_run(guests, eager=True)
    assert lazy[0] == "exit" and lazy[1] == 2
    assert lazy == eager
