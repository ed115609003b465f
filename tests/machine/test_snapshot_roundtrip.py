"""Snapshots as data (issue 17 item 1, 5): a run stopped at T, saved and resumed in a fresh machine ends exactly
like the same run continued in the same process -- result, exits, serial output, final registers and RAM --
on guests of 1, 2 and 4 vCPUs, a multiboot kernel, APs started by SIPI and a guest in user mode (CPL 3)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from unicorn import x86_const as X

from viridian.config.presets import load_config
from viridian.errors import UserError
from viridian.machine import snapshot
from viridian.machine.host import MIN_SLICE, Host
from viridian.machine.loader import load_image
from viridian.machine.machine import Machine
from viridian.machine.unicorn.snapshot_cpu import save_cpu
from viridian.report.run import stats_json

MAX_TICKS = 2_000_000_000


def options(image: Path, vcpus: int, mem: int = 128) -> dict[str, Any]:
    return {"image": str(image), "hv": None, "xen": None, "libvirt": None, "preset": None, "cpuid": [],
            "vcpus": vcpus, "mem": mem, "max_ticks": MAX_TICKS, "quantum": 200_000, "pcpus": None,
            "ple_window": 4096, "ple_gap": 128, "ap_start": "entry", "fast": False, "cmdline": ""}


def build(image: Path, vcpus: int, mem: int = 128, board: str = "minimal") -> Machine:
    return Machine(load_config(preset="recommended"), load_image(str(image)), vcpus=vcpus, mem_mib=mem,
                   max_ticks=MAX_TICKS, board=board)


def final_state(m: Machine, result: Any) -> dict[str, Any]:
    """Everything that must match: how the run ended, the stats JSON (exits, serial, time, per vCPU), every
    vCPU's registers and the RAM."""
    data = stats_json(m)
    return {"result": (result.status, result.code), "stats": json.dumps(data, sort_keys=True, default=str),
            "cpus": [save_cpu(v.uc) for v in m.vcpus], "ram": hashlib.sha256(m.ram).hexdigest()}


def stop_and_save(image: Path, vcpus: int, at: int, path: Path, mem: int = 128, board: str = "minimal") -> Machine:
    m = build(image, vcpus, mem, board)
    m.stop_at = at
    res = m.run()
    assert res.status == "snapshot", f"{image.name} ended ({res.status}) at tick {m.clock.tsc()}, before {at}"
    snapshot.prepare(m)
    taken = snapshot.save(m, str(path), options(image, vcpus, mem), at)
    assert taken >= at
    return m


def continue_here(m: Machine) -> dict[str, Any]:
    rr = m.host.rr if m.host is not None else 0
    m.result, m.stop_at = None, None
    host = Host([m], m.pcpus)
    host.rr = rr
    return final_state(m, host.run()[0])


def resume_fresh(path: Path) -> dict[str, Any]:
    m, rr, _manifest = snapshot.resume(str(path))
    host = Host([m], m.pcpus)
    host.rr = rr
    return final_state(m, host.run()[0])


CASES = [  # (image, vCPUs, snapshot time, board): mid-run, timers, IPIs, SIPI start-up, user mode, PC devices
    ("timecheck.elf", 1, 15_000_000, "minimal"),
    ("win8.elf", 2, 1_500_000, "minimal"),
    ("hv_ipi.elf", 4, 100_000, "minimal"),
    ("multiboot.elf", 1, 5_000, "minimal"),
    ("sipi.elf", 2, 50_000, "minimal"),
    ("syscall.elf", 1, 20_000, "minimal"),
    ("pic_pit.elf", 1, 10_000_000, "pc"),
    ("ioapic.elf", 1, 10_000_000, "pc"),
]


@pytest.mark.parametrize(("image", "vcpus", "at", "board"), CASES)
def test_resumed_run_equals_the_continued_run(guests: Path, tmp_path: Path, image: str, vcpus: int,
                                              at: int, board: str) -> None:
    path = tmp_path / "g.snap"
    m = stop_and_save(guests / image, vcpus, at, path, board=board)
    resumed = resume_fresh(path)
    continued = continue_here(m)
    assert resumed["result"] == continued["result"]
    assert resumed["stats"] == continued["stats"]
    assert resumed["cpus"] == continued["cpus"]
    assert resumed["ram"] == continued["ram"]


def test_a_single_vcpu_run_is_unchanged_by_the_snapshot(guests: Path, tmp_path: Path) -> None:
    """One vCPU: stopping at T only splits a slice, so the resumed run equals the run never stopped -- all
    but the partition clock after the guest's last exit, which the Host rounds to its last quantum (less than
    MIN_SLICE ticks; every exit and its time, the reference time, registers and RAM are identical)."""
    whole = build(guests / "timecheck.elf", 1)
    plain = final_state(whole, whole.run())
    stop_and_save(guests / "timecheck.elf", 1, 15_000_000, tmp_path / "t.snap")
    resumed = resume_fresh(tmp_path / "t.snap")
    a, b = json.loads(plain.pop("stats")), json.loads(resumed.pop("stats"))
    assert abs(a["time"].pop("tsc") - b["time"].pop("tsc")) < MIN_SLICE
    assert a == b and resumed == plain


@pytest.mark.parametrize("at", [1, 1000, 12_345])
def test_the_snapshot_lands_at_the_asked_time(guests: Path, tmp_path: Path, at: int) -> None:
    """Item 5: T before the first quantum ends (hello.elf used to exit 0 writing nothing)."""
    m = stop_and_save(guests / "hello.elf", 1, at, tmp_path / "h.snap")
    assert m.clock.tsc() >= at
    with snapshot.open_snapshot(str(tmp_path / "h.snap")) as snap:
        assert snap.manifest["time"] == {"requested": at, "tsc": m.clock.tsc()}
    assert resume_fresh(tmp_path / "h.snap")["result"] == ("exit", 0)


STI_LOOP = """
#include "guest.inc"
        .text
        .globl guest_main
guest_main:
        mov rcx, 100000
1:      sti                             /* the engine ends a block after STI: half the boundaries are shadows */
        cli
        dec rcx
        jnz 1b
        xor eax, eax
        ret
"""


def test_a_stop_inside_an_sti_shadow_moves_past_it(viridian_asm: Any, tmp_path: Path) -> None:
    """SDM vol. 3 §6.8.3: the instruction after STI runs before any interrupt. The register API cannot carry
    that shadow, so :func:`snapshot.prepare` runs such a vCPU on to its next block first."""
    image = viridian_asm(STI_LOOP, "sti_loop")
    for at in range(20_000, 21_000, 13):
        m = build(image, 1)
        m.stop_at = at
        assert m.run().status == "snapshot"
        if m.vcpus[0].in_sti_shadow():
            break
    else:
        pytest.fail("no stop inside an STI shadow")
    snapshot.prepare(m)
    assert not m.vcpus[0].in_sti_shadow() and m.clock.tsc() > at
    snapshot.save(m, str(tmp_path / "s.snap"), options(image, 1), at)
    assert resume_fresh(tmp_path / "s.snap") == continue_here(m)


def test_a_device_without_the_state_protocol_refuses_the_snapshot(guests: Path, tmp_path: Path) -> None:
    class Opaque:
        def read(self, port: int, size: int) -> int:
            return 0

        def write(self, port: int, size: int, value: int) -> None:
            return None

    m = build(guests / "hello.elf", 1)
    m.ports.attach((0x700,), Opaque())
    m.stop_at = 1000
    assert m.run().status == "snapshot"
    with pytest.raises(UserError, match="opaque@0x700 has no save_state"):
        snapshot.save(m, str(tmp_path / "x.snap"), options(guests / "hello.elf", 1), 1000)
    assert not (tmp_path / "x.snap").exists()


def test_a_vcpu_in_compatibility_mode_refuses_the_snapshot(guests: Path, tmp_path: Path) -> None:
    """SDM vol. 3 §5.2.1: EFER.LMA with CS.L = 0 is compatibility mode, which the register API cannot
    restore (a CS write sets only the selector): the descriptor the vCPU runs on is read and refused."""
    m = build(guests / "hello.elf", 1)
    m.stop_at = 1000
    assert m.run().status == "snapshot"
    v = m.vcpus[0]
    gdt, cs = v.uc.reg_read(X.UC_X86_REG_GDTR)[1], v.uc.reg_read(X.UC_X86_REG_CS)
    desc = int.from_bytes(m.ram[gdt + (cs & ~7) : gdt + (cs & ~7) + 8], "little")
    m.ram[gdt + (cs & ~7) : gdt + (cs & ~7) + 8] = (desc & ~(1 << 53) | 1 << 54).to_bytes(8, "little")
    with pytest.raises(UserError, match="compatibility-mode"):
        snapshot.save(m, str(tmp_path / "x.snap"), options(guests / "hello.elf", 1), 1000)
