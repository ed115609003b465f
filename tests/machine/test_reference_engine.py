"""The reference engine (viridian/machine/reference/): real fixture guests give the fast engine's outcome exactly
(serial output, result, exits by reason/MSR/hypercall/port/exception, virtual time) on 1 and 2 vCPUs; it runs
without the fast engine's compiled helpers; without a C compiler the CLI falls back to it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from viridian.config.presets import load_config
from viridian.machine.loader import load_image
from viridian.machine.machine import Machine
from viridian.report.run import stats_json

FIELDS = ("by_reason", "by_msr", "by_hypercall", "by_port", "by_exception")
# what each guest exercises on the reference engine: port I/O and HLT; the hypercall page stub and MSR sites;
# IDT delivery of #DE/#UD/#BP/#GP/#PF with the hidden fault state reset; SYSCALL from CPL 3 (CPL lowered over a
# clean context); INIT-SIPI real mode; APIC timer interrupts and the window; a multiboot 32-bit entry; SynIC
# timers; PV IPIs; GUEST_IDLE; the PC board's devices (MMIO dispatched to the running vCPU)
CASES = [("hello.elf", 1, "minimal"), ("hello.elf", 2, "minimal"), ("negotiate.elf", 1, "minimal"),
         ("exceptions.elf", 1, "minimal"), ("syscall.elf", 1, "minimal"), ("sipi.elf", 2, "minimal"),
         ("apic_timer.elf", 1, "minimal"), ("ipi.elf", 2, "minimal"), ("multiboot.elf", 1, "minimal"),
         ("stimer.elf", 1, "minimal"), ("hv_ipi.elf", 2, "minimal"), ("idle.elf", 1, "minimal"),
         ("hpet.elf", 1, "pc"), ("ioapic_smp.elf", 2, "pc"), ("pic_pit.elf", 1, "pc")]


def outcome(path: Path, engine: str, vcpus: int, board: str) -> dict[str, Any]:
    m = Machine(load_config(preset="recommended"), load_image(path), vcpus=vcpus, max_ticks=2_000_000_000,
                engine=engine, board=board)
    m.run()
    s = stats_json(m)
    return {"result": s["result"], "serial": s["serial"], "time": s["time"],
            **{k: s["exits"][k] for k in FIELDS}, "apic": s["apic"], "ticks": [v.ticks for v in m.vcpus]}


def _both(guests: Path, cases: list[tuple[str, int, str]], conformance: int = 0) -> dict[str, Any]:
    """Every case on the reference engine, then on the fast one, in a fresh process: the fast engine's engine
    patches are process-wide (store_watch.py's PLT redirects; its quiet loads/stores change how every instance in
    the process translates), so a reference run after a fast one in the same process is not Unicorn's own."""
    code = ("import json, sys\n"
            f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
            "from pathlib import Path\n"
            "import test_reference_engine as t\n"
            "print(json.dumps(t.collect(Path(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3]))))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(guests), json.dumps(cases), str(conformance)],
                          capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return result


def collect(guests: Path, cases: list[list[Any]], conformance: int) -> dict[str, Any]:
    from viridian.conformance.runner import run_suite

    out: dict[str, Any] = {}
    for engine in ("reference", "unicorn"):
        out[engine] = [outcome(guests / g, engine, n, board) for g, n, board in cases]
        if conformance:
            r = run_suite(load_config(preset="recommended"), "recommended", guests / "conformance.elf", conformance,
                          engine=engine)
            tests = [{k: v for k, v in t.items() if k != "seconds"} for t in r["tests"]]
            out[engine + "_conformance"] = {"tests": tests, **{k: r[k] for k in ("complete", "counts", "problem")}}
    return out


@pytest.fixture(scope="module")
def both(guests: Path) -> dict[str, Any]:
    return _both(guests, CASES, conformance=2)


def test_same_outcome_as_the_fast_engine(both: dict[str, Any]) -> None:
    for (guest, vcpus, board), ref, fast in zip(CASES, both["reference"], both["unicorn"], strict=True):
        assert ref["result"]["status"] == "exit", (guest, vcpus, ref["result"])
        assert ref == fast, (guest, vcpus, board)


def test_conformance_suite_same_results(both: dict[str, Any]) -> None:
    """Every TLFS conformance test on 2 vCPUs: the same outcome and diagnostics on both engines (a line's virtual
    time is not compared: the fast engine hands COM1 bytes to the port in batches, vcpu_io.py, so a line
    completes later there)."""
    ref, fast = both["reference_conformance"], both["unicorn_conformance"]
    assert ref["complete"] and ref["counts"]["fail"] == 0, ref["problem"]
    assert (ref["counts"], ref["tests"]) == (fast["counts"], fast["tests"])


def test_runs_without_the_fast_engine(guests: Path) -> None:
    """Public API only: the fast engine's modules and compiled helper are never loaded."""
    code = ("import sys\n"
            "from viridian.machine.machine import Machine\n"
            "from viridian.config.presets import load_config\n"
            "from viridian.machine.loader import load_image\n"
            f"m = Machine(load_config(preset='recommended'), load_image({str(guests / 'hello.elf')!r}), vcpus=2,"
            " engine='reference')\n"
            "print(m.run().status)\n"
            "print(sorted(k for k in sys.modules if k.startswith('viridian.machine.unicorn')))\n"
            "print(sum('vcpu_native' in line for line in open('/proc/self/maps')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[:3] == ["exit", "[]", "0"]


def test_no_compiler_falls_back_with_one_line(guests: Path, tmp_path: Path) -> None:
    env = {**os.environ, "VIRIDIAN_CACHE": str(tmp_path), "CC": str(tmp_path / "no-such-cc")}
    proc = subprocess.run([str(Path(sys.executable).parent / "viridian"), "run", str(guests / "hello.elf"), "--vcpus", "2",
                           "-q"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line]
    assert len(lines) == 1 and "running the reference engine" in lines[0]
    assert not list(tmp_path.glob("vcpu_native*"))


def test_a_closed_machine_is_garbage(guests: Path) -> None:
    """Machine.close releases the shared instance with the last vCPU: nothing keeps the machine alive."""
    import gc
    import weakref

    with Machine(load_config(preset="recommended"), load_image(guests / "hello.elf"), vcpus=2,
                 engine="reference") as m:
        assert m.run().status == "exit"
    ref = weakref.ref(m)
    del m
    gc.collect()
    assert ref() is None


def _recorder(seen: list[int]) -> Any:
    """An INTR hook that records the vector and stops the engine."""

    def hook(u: Any, intno: int, _ud: Any) -> None:
        seen.append(intno)
        u.emu_stop()

    return hook


def _user_mode_uc() -> tuple[Any, Any, Any]:
    """A 64-bit instance taken to CPL 3 by IRETQ (GDT: 0x08 kernel code, 0x10 kernel data, 0x1B/0x23 user)."""
    import ctypes
    import struct

    from unicorn import UC_ARCH_X86, UC_HOOK_INTR, UC_MODE_64, UC_PROT_ALL, Uc
    from unicorn import x86_const as X

    ram = (ctypes.c_ubyte * (2 << 20))()
    q = lambda a, v: struct.pack_into("<Q", ram, a, v)  # noqa: E731
    for at, entry in ((0x1000, 0x2007), (0x2000, 0x3007), (0x3000, 0x87)):  # a user-accessible 2 MiB page
        q(at, entry)
    for at, desc in ((0x508, 0x00209A0000000000), (0x510, 0x0000920000000000), (0x518, 0x0020FA0000000000),
                     (0x520, 0x0000F20000000000)):
        q(at, desc)
    for i, v in enumerate((0x11000, 0x1B, 0x202, 0x9000, 0x23)):  # RIP CS RFLAGS RSP SS of the IRETQ frame
        q(0x7FD8 + 8 * i, v)
    # iretq to CPL 3; hlt (#GP there); mov rax, cr0; a non-canonical load (#GP)
    code = {0x10000: "48bcd87f00000000000048cf", 0x11000: "f4", 0x12000: "0f20c0f4",
            0x13000: "48bb0000000000f07f00488b03f4"}
    for at, hexcode in code.items():
        ctypes.memmove(ctypes.addressof(ram) + at, bytes.fromhex(hexcode), len(hexcode) // 2)
    uc: Any = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map_ptr(0, len(ram), UC_PROT_ALL, ctypes.addressof(ram))
    clean = uc.context_save()
    uc.reg_write(X.UC_X86_REG_GDTR, (0, 0x500, 0x27, 0))
    uc.reg_write(X.UC_X86_REG_CR3, 0x1000)
    uc.reg_write(X.UC_X86_REG_CR4, 0x620)
    uc.msr_write(0xC000_0080, 0x500)
    uc.reg_write(X.UC_X86_REG_CR0, 0x80010033)
    uc.reg_write(X.UC_X86_REG_CS, 8)
    uc.reg_write(X.UC_X86_REG_SS, 0x10)
    seen: list[int] = []
    uc.hook_add(UC_HOOK_INTR, _recorder(seen))
    uc.emu_start(0x10000, (1 << 64) - 1, count=3)  # mov rsp; iretq; hlt at CPL 3 -> #GP
    assert seen == [13] and uc.reg_read(X.UC_X86_REG_CS) == 0x1B
    return uc, clean, ram  # the caller keeps the RAM alive while the instance maps it


def test_hidden_state_reset_lowers_the_cpl_and_keeps_every_register() -> None:
    """hidden.reset_hidden: the registers read back the same, privileged code then runs at CPL 0 and the next
    fault is itself, not a double fault. A CS/SS write alone leaves the engine's CPL at 3 and its record of the
    first #GP: the same MOV from CR0 faults, reported as #GP or escalated to a spurious #DF."""
    from unicorn import UC_HOOK_INTR
    from unicorn import x86_const as X

    from viridian.machine.reference.hidden import capture, reset_hidden

    uc, clean, _ram = _user_mode_uc()
    before = capture(uc)
    reset_hidden(uc, clean, segs=(0x08, 0x10))
    after = capture(uc)
    assert after["segs"][:2] == [0x08, 0x10] and {k: v for k, v in after.items() if k != "segs"} == \
        {k: v for k, v in before.items() if k != "segs"}
    seen: list[int] = []
    uc.hook_add(UC_HOOK_INTR, _recorder(seen))
    uc.emu_start(0x13000, (1 << 64) - 1, count=3)  # a second #GP: reported as itself, the first one forgotten
    assert seen == [13]
    uc.emu_start(0x12000, (1 << 64) - 1, count=1)  # CPL 0 now: MOV from CR0 runs
    assert seen == [13] and uc.reg_read(X.UC_X86_REG_RAX) == 0x80010033

    uc, _clean, _ram = _user_mode_uc()  # without the reset: the selectors change, the CPL does not
    uc.reg_write(X.UC_X86_REG_CS, 0x08)
    uc.reg_write(X.UC_X86_REG_SS, 0x10)
    seen.clear()
    uc.hook_add(UC_HOOK_INTR, _recorder(seen))
    uc.emu_start(0x12000, (1 << 64) - 1, count=2)
    assert seen in ([13], [8])
