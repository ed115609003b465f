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
    UC_HOOK_BLOCK,
    UC_HOOK_CODE,
    UC_HOOK_INSN,
    UC_HOOK_INTR,
    UC_MODE_16,
    UC_MODE_32,
    UC_PROT_ALL,
    UcError,
)
from unicorn import x86_const as X

from viridian.machine.unicorn.engine import EFER
from viridian.machine.unicorn.engine_build import new_uc

if TYPE_CHECKING:
    from viridian.machine.unicorn.vcpu import Vcpu

STEP_LIMIT = 100_000
TICKS_PER_STEP = 4  # trampolines run instruction by instruction: charge ~4 bytes' worth each


def bring_up(v: Vcpu, vector: int) -> bool:
    """Run ``v``'s trampoline at ``vector << 12`` until it reaches 64-bit mode; True on success."""
    m = v.m
    uc: Any = new_uc(UC_MODE_16, f"vCPU {v.index}'s 16-bit start")
    uc.mem_map_ptr(0, m.ram_size, UC_PROT_ALL, ctypes.addressof(m.ram_buffer))
    state: dict[str, Any] = {"steps": 0, "long": False, "fault": None}

    def step(u: Any, address: int, size: int, _ud: Any) -> None:
        state["steps"] += 1
        if u.msr_read(EFER) & 0x400 and _cs_is_64bit(u, m):
            state["long"] = True
            u.emu_stop()

    def intr(u: Any, intno: int, _ud: Any) -> None:
        state["fault"] = intno
        u.emu_stop()

    uc.hook_add(UC_HOOK_CODE, step, None, 1, 0)
    _common_hooks(uc, v, intr)
    uc.reg_write(X.UC_X86_REG_CS, vector << 8)
    for seg in (X.UC_X86_REG_DS, X.UC_X86_REG_ES, X.UC_X86_REG_SS):
        uc.reg_write(seg, 0)
    try:  # engine fact (measured): a UC_MODE_16 start address is linear, IP = begin - CS.base (mod 64 KiB)
        uc.emu_start(vector << 12, 0xFFFF_FFFF, count=STEP_LIMIT)
    except UcError as exc:
        state["fault"] = str(exc)
    v.native.bytes += state["steps"] * TICKS_PER_STEP
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
    v.efer = int(v.uc.msr_read(EFER))
    v.stats.events["sipi_start"] += 1
    return True


MULTIBOOT_BLOCK_LIMIT = 2_000_000


def enter_multiboot(v: Vcpu, entry: int, magic: int, info: int) -> bool:
    """Multiboot entry (spec §3.2): run vCPU 0 from ``entry`` in 32-bit protected mode (paging off, flat
    segments, EAX = ``magic``, EBX = ``info``, IF = 0) in a UC_MODE_32 instance until the kernel reaches
    64-bit mode, then move the context into the vCPU's 64-bit instance. The 32-bit code gets RAM, port I/O
    and CPUID (no APIC MMIO, no synthetic MSRs: those work once in long mode). True on success."""
    m = v.m
    uc: Any = new_uc(UC_MODE_32, f"vCPU {v.index}'s 32-bit start")
    uc.mem_map_ptr(0, m.ram_size, UC_PROT_ALL, ctypes.addressof(m.ram_buffer))
    state: dict[str, Any] = {"blocks": 0, "bytes": 0, "long": False, "fault": None}

    def block(u: Any, address: int, size: int, _ud: Any) -> None:
        state["blocks"] += 1
        state["bytes"] += size
        if u.msr_read(EFER) & 0x400 and _cs_is_64bit(u, m):
            state["long"] = True
            u.emu_stop()
        elif state["blocks"] > MULTIBOOT_BLOCK_LIMIT:
            u.emu_stop()

    def intr(u: Any, intno: int, _ud: Any) -> None:
        state["fault"] = intno
        u.emu_stop()

    _common_hooks(uc, v, intr)
    uc.hook_add(UC_HOOK_BLOCK, block, None, 1, 0)
    uc.reg_write_batch([(X.UC_X86_REG_EAX, magic), (X.UC_X86_REG_EBX, info), (X.UC_X86_REG_EFLAGS, 2)])
    try:
        uc.emu_start(entry, 0xFFFF_FFFF)
    except UcError as exc:
        state["fault"] = str(exc)
    v.native.bytes += state["bytes"]
    if m.done:
        return False
    if not state["long"]:
        why = f"exception {state['fault']}" if state["fault"] is not None else \
            f"not in long mode after {state['blocks']} blocks"
        rip = uc.reg_read(X.UC_X86_REG_EIP)
        m.finish("error", vcpu=v.index, detail=f"multiboot entry at {entry:#x} failed at {rip:#x}: {why} "
                 "(the 32-bit entry must switch to long mode; APIC and synthetic MSRs work only there)")
        return False
    v.uc.context_restore(uc.context_save())
    v.uc.ctl_flush_tb()
    v.efer = int(v.uc.msr_read(EFER))
    v.stats.events["multiboot_entry"] += 1
    return True


def _cs_is_64bit(u: Any, m: Any) -> bool:
    cs = u.reg_read(X.UC_X86_REG_CS)
    gdtr = u.reg_read(X.UC_X86_REG_GDTR)
    off = gdtr[1] + (cs & ~7)
    return bool(off + 8 <= m.ram_size and struct.unpack_from("<Q", m.ram, off)[0] >> 53 & 1)


def _common_hooks(uc: Any, v: Vcpu, intr: Any) -> None:
    """Port I/O and CPUID for a pre-long-mode instance (the exit port ends the run)."""
    m = v.m

    def port_in(u: Any, port: int, size: int, _ud: Any) -> int:
        if m.platform is not None:
            m.platform.touched()  # (quiet_ple caches the platform's next deadline between accesses)
        return m.ports.read(port, size)

    def port_out(u: Any, port: int, size: int, value: int, _ud: Any) -> None:
        try:
            if m.platform is not None:
                m.platform.touched()
            m.ports.write(port, size, value)
        except Exception as exc:  # ExitRequested: the run ends here
            m.finish("exit", code=getattr(exc, "code", 1), vcpu=v.index)
            u.emu_stop()

    def cpuid(u: Any, _ud: Any) -> int:  # a 16/32-bit instance has no RAX..RDX in its register API: E-regs
        r = v.traps.cpuid_leaf(u.reg_read(X.UC_X86_REG_EAX), u.reg_read(X.UC_X86_REG_ECX))
        u.reg_write_batch([(X.UC_X86_REG_EAX, r.eax), (X.UC_X86_REG_EBX, r.ebx), (X.UC_X86_REG_ECX, r.ecx),
                           (X.UC_X86_REG_EDX, r.edx)])
        return 1

    uc.hook_add(UC_HOOK_INTR, intr)
    uc.hook_add(UC_HOOK_INSN, port_in, None, 1, 0, X.UC_X86_INS_IN)
    uc.hook_add(UC_HOOK_INSN, port_out, None, 1, 0, X.UC_X86_INS_OUT)
    uc.hook_add(UC_HOOK_INSN, cpuid, None, 1, 0, X.UC_X86_INS_CPUID)
