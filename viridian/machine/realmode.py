"""Application-processor start-up by INIT-SIPI (SDM vol. 3 §8.4.4): the AP begins in real mode at
CS:IP = (vector << 8):0000 and must switch itself to long mode.

Engine fact (engine notes, "Modes"): a UC_MODE_64 instance cannot run real-mode code, but a UC_MODE_16
instance runs a real -> protected -> long mode trampoline correctly. So the AP's trampoline runs in a
UC_MODE_16 instance over the same RAM, with a per-instruction hook that stops once EFER.LMA is set and CS
is a 64-bit code segment; the CPU context is then moved into the AP's normal UC_MODE_64 instance.
Trampolines get port I/O and CPUID; an exception, HLT or more than STEP_LIMIT instructions before long mode
ends the run with status "error" (real-mode interrupts through an IVT are not emulated).
"""

from __future__ import annotations

import ctypes
import struct
from typing import TYPE_CHECKING, Any

from unicorn import (
    UC_ARCH_X86,
    UC_HOOK_CODE,
    UC_HOOK_INSN,
    UC_HOOK_INTR,
    UC_MODE_16,
    UC_PROT_ALL,
    Uc,
    UcError,
)
from unicorn import x86_const as X

from viridian.machine.engine import EFER

if TYPE_CHECKING:
    from viridian.machine.vcpu import Vcpu

STEP_LIMIT = 100_000
TICKS_PER_STEP = 4  # trampolines run instruction by instruction: charge ~4 bytes' worth each


def bring_up(v: Vcpu, vector: int) -> bool:
    """Run ``v``'s trampoline at ``vector << 12`` until it reaches 64-bit mode; True on success."""
    m = v.m
    uc: Any = Uc(UC_ARCH_X86, UC_MODE_16)
    uc.mem_map_ptr(0, m.ram_size, UC_PROT_ALL, ctypes.addressof(m.ram_buffer))
    state: dict[str, Any] = {"steps": 0, "long": False, "fault": None}

    def step(u: Any, address: int, size: int, _ud: Any) -> None:
        state["steps"] += 1
        if u.msr_read(EFER) & 0x400:
            cs = u.reg_read(X.UC_X86_REG_CS)
            gdtr = u.reg_read(X.UC_X86_REG_GDTR)
            off = gdtr[1] + (cs & ~7)
            if off + 8 <= m.ram_size and struct.unpack_from("<Q", m.ram, off)[0] >> 53 & 1:
                state["long"] = True
                u.emu_stop()

    def intr(u: Any, intno: int, _ud: Any) -> None:
        state["fault"] = intno
        u.emu_stop()

    def port_in(u: Any, port: int, size: int, _ud: Any) -> int:
        return m.ports.read(port, size)

    def port_out(u: Any, port: int, size: int, value: int, _ud: Any) -> None:
        try:
            m.ports.write(port, size, value)
        except Exception as exc:  # ExitRequested: the run ends here
            code = getattr(exc, "code", 1)
            m.finish("exit", code=code, vcpu=v.index)
            u.emu_stop()

    def cpuid(u: Any, _ud: Any) -> int:
        return v.traps._cpuid(u, None)

    uc.hook_add(UC_HOOK_CODE, step, None, 1, 0)
    uc.hook_add(UC_HOOK_INTR, intr)
    uc.hook_add(UC_HOOK_INSN, port_in, None, 1, 0, X.UC_X86_INS_IN)
    uc.hook_add(UC_HOOK_INSN, port_out, None, 1, 0, X.UC_X86_INS_OUT)
    uc.hook_add(UC_HOOK_INSN, cpuid, None, 1, 0, X.UC_X86_INS_CPUID)
    uc.reg_write(X.UC_X86_REG_CS, vector << 8)
    for seg in (X.UC_X86_REG_DS, X.UC_X86_REG_ES, X.UC_X86_REG_SS):
        uc.reg_write(seg, 0)
    try:
        uc.emu_start(0, 0xFFFF_FFFF, count=STEP_LIMIT)
    except UcError as exc:
        state["fault"] = str(exc)
    v._native.bytes += state["steps"] * TICKS_PER_STEP
    if m.done:
        return False
    if not state["long"]:
        why = f"exception {state['fault']}" if state["fault"] is not None else \
            f"not in long mode after {state['steps']} instructions"
        m.finish("error", vcpu=v.index, detail=f"AP trampoline at {vector << 12:#x} failed: {why}")
        return False
    ctx = uc.context_save()
    v.uc.context_restore(ctx)
    v.uc.ctl_flush_tb()
    v._efer = int(v.uc.msr_read(EFER))
    v.stats.events["sipi_start"] += 1
    return True
