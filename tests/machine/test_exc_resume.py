"""A RIP written in the engine's interrupt hook (exception delivery, vcpu_delivery.enter) must not outlive the
hook: Unicorn 2.1.4 marks such a write "leave without restoring the PC", and the exit request that comes with
it is consumed by the engine's loop before any block checks it. Left set, the mark made the next stop at a
block start keep a stale PC, and the vCPU ran already-executed instructions again (docs/architecture.md,
"Engine rules"; the 2-vCPU Debian corruption of issue 19).

fixtures/guests/machine/exc_resume.S takes an int3 per round, then runs a loop of eight directly chained blocks
across slice ends; every counter must match what the code says. It needs the 200 k-tick slices of a machine
with more than one vCPU (a lone vCPU's 20 M-tick slice outlasts the whole loop).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest
from unicorn import UC_MODE_64
from unicorn import x86_const as X

from viridian.config.presets import load_config
from viridian.machine.loader import load_image
from viridian.machine.machine import Machine
from viridian.machine.unicorn import engine as E
from viridian.machine.unicorn.engine_build import new_uc


@pytest.mark.parametrize("vcpus", [2, 4])
def test_code_after_an_exception_runs_once(guests: Path, vcpus: int) -> None:
    m = Machine(load_config(preset="recommended"), load_image(guests / "exc_resume.elf"), vcpus=vcpus,
                max_ticks=4_000_000_000)
    result = m.run()
    out = m.ports.serial.text()
    assert (result.status, result.code) == ("exit", 0), out[-400:]
    assert "marker=32 " in out and "exc_resume ok" in out, out[-400:]
    stats = m.total_stats()
    assert stats.exceptions[3] == 32  # one #BP per round, each delivered in the interrupt hook
    assert m.vcpus[0].ticks > 2 * m.quantum  # the loop crossed slice ends


def test_the_pc_mark_is_found_and_dropped() -> None:
    off = E.pc_mark_offset()
    assert off is not None  # the pinned engine (engine_build.PINNED) has it
    uc = new_uc(UC_MODE_64)
    uc.mem_map(0x1000, 0x1000)
    uc.mem_write(0x1000, b"\x90\xf4")
    uc.emu_start(0x1000, 0x1001)
    mark = ctypes.c_uint8.from_address(uc._uch.value + off)
    uc.reg_write(X.UC_X86_REG_RSP, 0x1800)
    assert mark.value == 0  # only a RIP write sets it
    uc.reg_write(X.UC_X86_REG_RIP, 0x1000)
    assert mark.value == 1
    E.drop_pc_mark(uc)
    assert mark.value == 0
