"""Starting a vCPU outside long mode: an AP's INIT-SIPI real-mode trampoline (SDM vol. 3 §8.4.4) and a multiboot
kernel's 32-bit entry (Multiboot spec §3.2).

Engine fact (docs/unicorn-engine-notes, "Modes"): a UC_MODE_64 instance cannot run real-mode code; a UC_MODE_16
(or UC_MODE_32) instance over the same RAM runs the code until it reaches long mode (EFER.LMA and a 64-bit CS),
and its saved context then continues in the 64-bit instance (uc_context_save / uc_context_restore). The short
instance gets port I/O and CPUID; an exception, HLT or too many instructions before long mode ends the run
with status "error". Clock charges as the fast engine's realmode.py (4 ticks per real-mode instruction; bytes
of blocks for the 32-bit entry).
"""

from __future__ import annotations

import ctypes
import struct
from typing import TYPE_CHECKING, Any

from unicorn import (
    UC_ARCH_X86,
    UC_HOOK_BLOCK,
    UC_HOOK_CODE,
    UC_HOOK_INSN,
    UC_HOOK_INTR,
    UC_MODE_16,
    UC_MODE_32,
    UC_PROT_ALL,
    Uc,
    UcError,
)
from unicorn import x86_const as X

from viridian.machine.multiboot import BOOT_MAGIC

if TYPE_CHECKING:
    from viridian.machine.reference.vcpu import Vcpu

STEP_LIMIT = 100_000
TICKS_PER_STEP = 4
BLOCK_LIMIT = 2_000_000
EFER = 0xC000_0080


def _instance(v: Vcpu, mode: int) -> Any:
    uc: Any = Uc(UC_ARCH_X86, mode)
    uc.ctl_set_tcg_buffer_size(4 << 20)
    uc.mem_map_ptr(0, v.m.ram_size, UC_PROT_ALL, ctypes.addressof(v.m.ram_buffer))
    return uc


def _long_mode(u: Any, v: Vcpu) -> bool:
    if not u.msr_read(EFER) & 0x400:
        return False
    cs = u.reg_read(X.UC_X86_REG_CS)
    off = u.reg_read(X.UC_X86_REG_GDTR)[1] + (cs & ~7)
    return bool(off + 8 <= v.m.ram_size and struct.unpack_from("<Q", v.m.ram, off)[0] >> 53 & 1)


def _hooks(uc: Any, v: Vcpu, state: dict[str, Any]) -> None:
    from viridian.machine.reference.traps import cpuid_leaf

    def intr(u: Any, intno: int, _ud: Any) -> None:
        state["fault"] = intno
        u.emu_stop()

    def port_in(u: Any, port: int, size: int, _ud: Any) -> int:
        return int(v.m.ports.read(port, size))

    def port_out(u: Any, port: int, size: int, value: int, _ud: Any) -> None:
        try:
            v.m.ports.write(port, size, value)
        except Exception as exc:
            v.m.finish("exit", code=getattr(exc, "code", 1), vcpu=v.index)
            u.emu_stop()

    def cpuid(u: Any, _ud: Any) -> int:  # a 16/32-bit instance's register API has E-registers only
        r = cpuid_leaf(v, u.reg_read(X.UC_X86_REG_EAX), u.reg_read(X.UC_X86_REG_ECX))
        u.reg_write_batch([(X.UC_X86_REG_EAX, r.eax), (X.UC_X86_REG_EBX, r.ebx), (X.UC_X86_REG_ECX, r.ecx),
                           (X.UC_X86_REG_EDX, r.edx)])
        return 1

    uc.hook_add(UC_HOOK_INTR, intr)
    uc.hook_add(UC_HOOK_INSN, port_in, None, 1, 0, X.UC_X86_INS_IN)
    uc.hook_add(UC_HOOK_INSN, port_out, None, 1, 0, X.UC_X86_INS_OUT)
    uc.hook_add(UC_HOOK_INSN, cpuid, None, 1, 0, X.UC_X86_INS_CPUID)


def _adopt(v: Vcpu, uc: Any) -> None:
    """Continue in the shared 64-bit instance from the short instance's state (v is loaded)."""
    v.eng.uc.context_restore(uc.context_save())
    v.eng.flush_tlb()
    v.eng.uc.context_update(v.ctx)
    v.efer = int(v.eng.uc.msr_read(EFER))
    v.block_start, v.pend_valid, v.last_ran = 0, False, None


def bring_up(v: Vcpu, vector: int) -> bool:
    """Run ``v``'s trampoline at ``vector << 12`` until it reaches 64-bit mode; True on success."""
    m = v.m
    uc = _instance(v, UC_MODE_16)
    state: dict[str, Any] = {"steps": 0, "long": False, "fault": None}

    def step(u: Any, _address: int, _size: int, _ud: Any) -> None:
        state["steps"] += 1
        if _long_mode(u, v):
            state["long"] = True
            u.emu_stop()

    uc.hook_add(UC_HOOK_CODE, step, None, 1, 0)
    _hooks(uc, v, state)
    uc.reg_write(X.UC_X86_REG_CS, vector << 8)
    for seg in (X.UC_X86_REG_DS, X.UC_X86_REG_ES, X.UC_X86_REG_SS):
        uc.reg_write(seg, 0)
    try:  # engine fact (measured): a UC_MODE_16 start address is linear, IP = begin - CS.base (mod 64 KiB)
        uc.emu_start(vector << 12, 0xFFFF_FFFF, count=STEP_LIMIT)
    except UcError as exc:
        state["fault"] = str(exc)
    v.bytes += state["steps"] * TICKS_PER_STEP
    if m.done:
        return False
    if not state["long"]:
        why = f"exception {state['fault']}" if state["fault"] is not None else \
            f"not in long mode after {state['steps']} instructions"
        m.finish("error", vcpu=v.index, detail=f"AP trampoline at {vector << 12:#x} failed: {why}")
        return False
    _adopt(v, uc)
    v.stats.events["sipi_start"] += 1
    return True


def enter_multiboot(v: Vcpu, entry: int, info: int) -> bool:
    """Multiboot entry: 32-bit protected mode, EAX = magic, EBX = info, IF = 0, until the kernel is in 64-bit
    mode (APIC and synthetic MSRs work only there); True on success."""
    m = v.m
    uc = _instance(v, UC_MODE_32)
    state: dict[str, Any] = {"blocks": 0, "bytes": 0, "long": False, "fault": None}

    def block(u: Any, _address: int, size: int, _ud: Any) -> None:
        state["blocks"] += 1
        state["bytes"] += size
        if _long_mode(u, v):
            state["long"] = True
            u.emu_stop()
        elif state["blocks"] > BLOCK_LIMIT:
            u.emu_stop()

    _hooks(uc, v, state)
    uc.hook_add(UC_HOOK_BLOCK, block, None, 1, 0)
    uc.reg_write_batch([(X.UC_X86_REG_EAX, BOOT_MAGIC), (X.UC_X86_REG_EBX, info), (X.UC_X86_REG_EFLAGS, 2)])
    try:
        uc.emu_start(entry, 0xFFFF_FFFF)
    except UcError as exc:
        state["fault"] = str(exc)
    v.bytes += state["bytes"]
    if m.done:
        return False
    if not state["long"]:
        why = f"exception {state['fault']}" if state["fault"] is not None else \
            f"not in long mode after {state['blocks']} blocks"
        rip = uc.reg_read(X.UC_X86_REG_EIP)
        m.finish("error", vcpu=v.index, detail=f"multiboot entry at {entry:#x} failed at {rip:#x}: {why} "
                 "(the 32-bit entry must switch to long mode; APIC and synthetic MSRs work only there)")
        return False
    _adopt(v, uc)
    v.stats.events["multiboot_entry"] += 1
    return True
