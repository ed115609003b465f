"""Exceptions, interrupts and NMIs on the reference engine: the INTR hook only records (and stops); delivery
through the guest IDT (viridian.machine.delivery over a page walk) happens in the run loop, between runs.

Interrupt shadow and NMI blocking are modelled here from what ran, not read from the engine: QEMU ends a block
after STI / MOV SS / POP SS, so "stopped at a block start right after a block that ended with one of them" is
the shadow (SDM vol. 3 §6.8.3); NMIs are blocked from an NMI's delivery until a block ending with IRET has run
(SDM vol. 3 §6.7.1).
"""

from __future__ import annotations

import struct
from functools import cache
from typing import TYPE_CHECKING, Any

import capstone
from unicorn import x86_const as X

from viridian.machine import interrupt_source
from viridian.machine import layout as L
from viridian.machine.delivery import CONTRIBUTORY, ERROR_CODE_VECTORS, PF, CpuView, TripleFault, deliver
from viridian.machine.reference import arch as A
from viridian.machine.reference.edge import stop as edge_stop
from viridian.machine.reference.hidden import reset_hidden
from viridian.machine.reference.regs import RegSet, ids
from viridian.machine.reference.startup import bring_up, enter_multiboot  # noqa: F401 - re-exported
from viridian.machine.reference.vcpu_state import lost_fault, pf_error_code

if TYPE_CHECKING:
    from viridian.machine.boot import BootRegisters
    from viridian.machine.reference.vcpu import Vcpu

DF, GP = 8, 13
IF = 1 << 9
_VIEW = RegSet(ids("rip", "rsp", "rflags", "cs", "ss", "cr0", "cr3"))
_DELIVER = RegSet(ids("cs", "ss", "rsp", "rflags", "rip"))
_DELIVER_SAME_SS = RegSet(ids("cs", "rsp", "rflags", "rip"))


@cache
def _md() -> capstone.Cs:
    return capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)


def set_boot_state(v: Vcpu, b: BootRegisters) -> None:
    """The guest contract's entry state (README; as the fast engine's Vcpu._set_boot_state)."""
    uc: Any = v.eng.uc
    uc.reg_write(X.UC_X86_REG_GDTR, (0, b.gdt, 7 * 8 - 1, 0))
    uc.reg_write(X.UC_X86_REG_IDTR, (0, 0, 0, 0))
    uc.reg_write(X.UC_X86_REG_CR3, L.PML4)
    uc.reg_write(X.UC_X86_REG_CR4, L.CR4_BOOT)
    uc.msr_write(0xC000_0080, L.EFER_BOOT)
    uc.reg_write(X.UC_X86_REG_CR0, L.CR0_BOOT)
    uc.reg_write(X.UC_X86_REG_CS, b.cs)
    for reg in (X.UC_X86_REG_SS, X.UC_X86_REG_DS, X.UC_X86_REG_ES, X.UC_X86_REG_FS, X.UC_X86_REG_GS):
        uc.reg_write(reg, b.ds)
    uc.reg_write(X.UC_X86_REG_TR, (L.TSS_SEL, b.tss, L.TSS_LIMIT, 0x8B))
    uc.reg_write_batch([(X.UC_X86_REG_RIP, b.rip), (X.UC_X86_REG_RSP, b.rsp), (X.UC_X86_REG_RDI, b.rdi),
                        (X.UC_X86_REG_RSI, b.rsi), (X.UC_X86_REG_RDX, b.rdx), (X.UC_X86_REG_RCX, b.rcx),
                        (X.UC_X86_REG_RFLAGS, 2)])
    v.efer = int(uc.msr_read(0xC000_0080))


def canonical(address: int) -> bool:
    return (address >> 47) in (0, (1 << 17) - 1)  # SDM vol. 1 §3.3.7.1


# -- the INTR hook ---------------------------------------------------------------------------------------------
def interrupt(v: Vcpu, intno: int) -> None:
    """The engine reports exception ``intno`` instead of delivering it: record it, stop, deliver between runs."""
    uc = v.eng.uc
    rip = int(uc.reg_read(X.UC_X86_REG_RIP))
    v.pending_site = 0
    if intno in CONTRIBUTORY or intno in (PF, DF):
        v.fault_state_dirty = True  # the engine's old_exception now holds it (hidden.py)
    if intno == DF and (seg := A.segment_fault(v, rip)) is not None:  # arch.py: a segment load's own fault
        v.df_retry = None
        v.settle(rip)
        raise_exception(v, seg[0], seg[1], rip, count_exit=True)
        return
    if intno == DF and v.read_virtual(rip - 2, 2) != b"\xcd\x08":  # the engine escalated a second fault
        if not canonical(rip):
            intno = GP
        elif int(uc.reg_read(X.UC_X86_REG_CR2)) != v.guest_cr2:
            intno = PF
        elif v.df_retry != rip:  # run the instruction again once, with a clean fault state
            v.df_retry = rip
            v.stats.events["engine #DF retried"] += 1
            v.settle(rip)
            v.retry_clean = True
            v.stop()
            return
    v.df_retry = None
    error = 0 if intno in ERROR_CODE_VECTORS else None
    if intno == PF:
        cr2 = int(uc.reg_read(X.UC_X86_REG_CR2))
        if cr2 == (1 << 64) - 2:  # the engine's own failed translation of until - 1 (vcpu.SPURIOUS_CR2)
            v.stats.events["engine_fault_dropped"] += 1
            uc.reg_write(X.UC_X86_REG_CR2, v.guest_cr2)
            v.stop()
            return
        v.guest_cr2 = cr2
        error = pf_error_code(v, cr2)
    if intno == GP and not canonical(rip) and (at := A.non_canonical_branch(v)) is not None:
        raise_exception(v, GP, 0, at, count_exit=True)  # SDM vol. 2A JMP/CALL/RET: #GP(0) at the branch
        return
    v.settle(rip)  # the rest of the block does not run (a fault: nor does the instruction at rip)
    raise_exception(v, intno, error, rip, count_exit=True, external=not software_interrupt(v, intno, rip))


def software_interrupt(v: Vcpu, intno: int, rip: int) -> bool:
    """INT n / INT3 / INTO / INT1 (reported after the instruction): delivery errors have EXT = 0."""
    before = v.read_virtual(rip - 2, 2) if rip >= 2 else None
    if before is None:
        return False
    return before == bytes((0xCD, intno)) or before[1:] == {3: b"\xcc", 4: b"\xce", 1: b"\xf1"}.get(intno)


def raise_exception(v: Vcpu, vector: int, error: int | None, rip: int, *, count_exit: bool = False,
                    deferred: bool = True, external: bool = True) -> None:
    """Deliver exception ``vector`` at ``rip``; ``deferred``: from a hook, so the run loop delivers it."""
    if count_exit:
        v.count_exit("exception")
    v.stats.exceptions[vector] += 1
    if vector in ERROR_CODE_VECTORS and error is None:
        error = 0
    if v.m.tracer is not None:
        v.m.tracer.exception(v, vector, error, rip)
    if deferred:
        v.pending_exc = (vector, error, rip, external)
        v.stop()
    else:
        enter(v, vector, error, rip, external=external)


def apply_deferred(v: Vcpu) -> None:
    """What a hook left for the run loop: a RIP redirect, an exception, a clean fault state."""
    if v.retry_clean:
        v.retry_clean = False
        clean(v)
    if v.next_rip is not None:
        v.eng.uc.reg_write(X.UC_X86_REG_RIP, v.next_rip)
        v.next_rip = None
    if v.pending_exc is not None and not v.m.done:
        vector, error, rip, external = v.pending_exc
        v.pending_exc = None
        enter(v, vector, error, rip, external=external)


def clean(v: Vcpu, segs: tuple[int, int] | None = None) -> None:
    reset_hidden(v.eng.uc, v.eng.clean, segs=segs)
    v.fault_state_dirty = False
    v.stats.events["engine state reset"] += 1


def enter(v: Vcpu, vector: int, error: int | None, rip: int, *, external: bool = True) -> bool:
    """Enter the handler (SDM vol. 3 §6.14): the frame is written by delivery.py; CPL 3 -> 0 and a recorded
    fault need the engine's hidden state reset (hidden.py)."""
    uc, h = v.eng.uc, v.eng.h
    _rip, rsp, rflags, cs, ss, cr0, cr3 = _VIEW.read(h)
    _s, idt_base, idt_limit, _f = uc.reg_read(X.UC_X86_REG_IDTR)
    tr_base = uc.reg_read(X.UC_X86_REG_TR)[1]
    _s, gdt_base, gdt_limit, _f = uc.reg_read(X.UC_X86_REG_GDTR)
    cpu = CpuView(rip, rsp, rflags, cs, ss, cr0, cr3, idt_base, idt_limit, tr_base, gdt_base, gdt_limit)
    try:
        at = None if external else A.software_interrupt_at(v, vector, rip)
        d = deliver(v.m.walker, cpu, vector, error, rip, external=external, io=A.reader(v), insn_rip=at)
    except TripleFault as tf:
        A.delivery_faults(v, tf.raised, tf.cr2)
        v.m.finish("triple-fault", vcpu=v.index, detail=str(tf), disasm=v.describe_instruction(rip))
        v.stop()
        return False
    if d.raised:
        A.delivery_faults(v, d.raised, d.cr2)
    new_ss = ss if d.ss is None else d.ss
    if (d.cs & 3 < cs & 3 or v.fault_state_dirty) and d.cs & 3 == 0:
        clean(v, segs=(d.cs, new_ss))
    if d.ss is None:
        _DELIVER_SAME_SS.write(h, (d.cs, d.rsp, d.rflags, d.rip))
    else:
        _DELIVER.write(h, (d.cs, d.ss, d.rsp, d.rflags, d.rip))
    return True


# -- pending interrupts, the window, the shadow ---------------------------------------------------------------------
def has_interrupt(v: Vcpu) -> bool:
    """A maskable interrupt is pending: the local APIC's, or the 8259A's ExtINT on the BSP (--machine pc)."""
    if v.apic.pending_vector() is not None:
        return True
    p = v.m.platform
    return p is not None and v.index == 0 and p.extint_pending()


def nmi_window(v: Vcpu) -> bool:
    return v.nmi_pending and v.nmi_blocked


def _last_insn(v: Vcpu) -> Any:
    if v.last_ran is None:
        return None
    start, end = v.last_ran
    if not 0 <= end - start < 0x1000:
        return None
    code = v.read_virtual(start, end + 1 - start)
    last = None
    for insn in _md().disasm(code or b"", start):
        last = insn
    return last if last is not None and last.address + last.size == end + 1 else None


def check_iret(v: Vcpu) -> None:
    """NMI blocking ends with the first IRET after the NMI's delivery (SDM vol. 3 §6.7.1)."""
    insn = _last_insn(v)
    if insn is not None and insn.mnemonic.startswith("iret"):
        v.nmi_blocked = False


def in_sti_shadow(v: Vcpu) -> bool:
    """Stopped at a block start right after a block that ended with STI, MOV SS or POP SS (SDM vol. 3 §6.8.3)."""
    rip = v.rip_flags()[0]
    if rip != v.block_start:
        return False
    insn = _last_insn(v)
    if insn is None:
        return False
    return insn.mnemonic == "sti" or (insn.mnemonic in ("mov", "pop") and insn.op_str.startswith("ss"))


def interruptible(v: Vcpu) -> bool:
    rip, rflags = v.rip_flags()
    if not rflags & IF:
        return False
    if rip == v.window_open_at:
        return True
    return not in_sti_shadow(v)


def set_window(v: Vcpu, blocked: bool) -> None:
    """VMX interrupt-window exiting: while an interrupt waits for IF = 1 (or the shadow), every block start is
    checked (window_block) and the engine stops at the first that can take it."""
    if blocked and not v.window_active:
        v.stats.exit("interrupt_window")
        v.window_shadow = in_sti_shadow(v)
        v.window_prev_if = bool(v.rip_flags()[1] & IF)
        v.window_first = v.window_active = True
    elif not blocked:
        v.window_active = False


def window_block(v: Vcpu, address: int) -> bool:
    """At a block start with the window open: stop here if IF = 1 and not in the STI shadow (csrc window_block)."""
    first, v.window_first = v.window_first, False
    if not v.rip_flags()[1] & IF:
        v.window_prev_if = False
        return False
    if first:
        shadow = v.window_shadow
    elif not v.window_prev_if:
        shadow = v.last_ran is not None and v.read_virtual(v.last_ran[1], 1) == b"\xfb"
    else:
        shadow = False
    v.window_prev_if = True
    if shadow:
        return False  # the one shadowed instruction runs; the block after it is checked
    if v.pending_site and 2 <= address - v.pending_site <= 4:
        return False
    if address in v.eng.stub_at:
        return False
    v.window_open_at = address
    v.stop_reason = "window"
    v.eng.uc.emu_stop()
    return True


def inject_pending(v: Vcpu) -> bool:
    """Deliver an NMI, or the highest pending interrupt if RFLAGS.IF and priority allow (HLT wakes here)."""
    interrupt_source.prepare(v)
    if v.nmi_pending and not v.nmi_blocked:  # NMI: not maskable by IF or TPR (SDM §6.7)
        v.nmi_pending = v.halted = False
        if enter(v, 2, None, v.rip_flags()[0]):
            v.nmi_blocked = True
            interrupt_source.delivered(v, 2, "nmi")
        return True
    if (source := interrupt_source.pending(v)) is None or not interruptible(v):
        return False
    v.window_open_at = None
    extint, _ = source
    vector = interrupt_source.acknowledge(v, *source)
    v.halted = False
    if enter(v, vector, None, v.rip_flags()[0]):
        interrupt_source.delivered(v, vector, "extint" if extint else "apic")
    return True


# -- SYSCALL, HLT and stops the engine does not explain --------------------------------------------------------------
def enter_syscall(v: Vcpu) -> None:
    """SDM vol. 2B "SYSCALL" (Unicorn's helper only calls hooks and steps over it): #UD unless EFER.SCE; RCX =
    RIP, R11 = RFLAGS, RFLAGS &= ~FMASK, CS = STAR[47:32] (CPL 0), SS = CS + 8, RIP = LSTAR."""
    uc = v.eng.uc
    rip, rflags = v.rip_flags()
    efer = int(uc.msr_read(0xC000_0080))
    if not efer & 1:
        raise_exception(v, 6, None, rip - 2, count_exit=True, deferred=False)
        return
    long_mode = bool(efer & 0x400)
    star = int(uc.msr_read(0xC000_0081))
    target = int(uc.msr_read(0xC000_0082)) if long_mode else star & 0xFFFF_FFFF
    mask = (int(uc.msr_read(0xC000_0084)) | 1 << 16) if long_mode else (1 << 9 | 1 << 17 | 1 << 16)
    sel = (star >> 32) & 0xFFFC
    uc.reg_write(X.UC_X86_REG_RCX, rip)
    if long_mode:
        uc.reg_write(X.UC_X86_REG_R11, rflags & ~(1 << 16))
    if int(uc.reg_read(X.UC_X86_REG_CS)) & 3 or v.fault_state_dirty:
        clean(v, segs=(sel, sel + 8))
    else:
        uc.reg_write(X.UC_X86_REG_CS, sel)
        uc.reg_write(X.UC_X86_REG_SS, sel + 8)
    uc.reg_write(X.UC_X86_REG_RFLAGS, rflags & ~mask)
    uc.reg_write(X.UC_X86_REG_RIP, target)
    v.stats.events["syscall"] += 1


def ended_in_hlt(v: Vcpu) -> bool:
    """The block that ran last ended with a HLT that completed (RIP right after it)."""
    insn = _last_insn_of_current(v)
    return insn is not None and bytes(insn.bytes) == b"\xf4" and v.rip_flags()[0] == insn.address + 1


def _last_insn_of_current(v: Vcpu) -> Any:
    saved = v.last_ran
    if v.pend_valid:
        v.last_ran = (v.block_start, v.pend_end)
    try:
        return _last_insn(v)
    finally:
        v.last_ran = saved


def after_natural_stop(v: Vcpu) -> None:
    """emu_start returned by itself: HLT (RIP is after it), or a fault the engine lost (vcpu_state.lost_fault)."""
    rip = v.rip_flags()[0]
    prev = v.read_virtual(rip - 1, 1)
    cs = int(v.eng.uc.reg_read(X.UC_X86_REG_CS))
    if prev == b"\xf4" and cs & 3:  # SDM: HLT at CPL > 0 raises #GP(0)
        raise_exception(v, 13, 0, rip - 1, count_exit=True, deferred=False)
        return
    if prev == b"\xf4":
        v.count_exit("hlt")
        v.m.neg.record_event(v.index, v.m.clock.tsc(), "hlt")
        v.halted = True
        return
    if edge_stop(v, rip) or lost_fault(v, rip) or A.natural_stop(v, rip) or A.resume_stop(v, rip):
        return
    v.m.finish("error", vcpu=v.index, detail=f"engine stopped unexpectedly at {rip:#x}",
               disasm=v.describe_instruction(rip))


def gdt_code_is_64bit(v: Vcpu, cs: int) -> bool:
    _sel, base, limit, _flags = v.eng.uc.reg_read(X.UC_X86_REG_GDTR)
    raw = v.read_virtual(base + (cs & ~7), 8) if (cs & ~7) + 7 <= limit else None
    return raw is None or bool(struct.unpack("<Q", raw)[0] >> 53 & 1)
