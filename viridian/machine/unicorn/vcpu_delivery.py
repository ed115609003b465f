"""Exception and interrupt delivery of one vCPU (engine side): the INTR hook, faults raised by traps, IDT
delivery through :mod:`viridian.machine.delivery`, the interrupt window / STI shadow test, and the injection of
pending APIC interrupts and NMIs. Functions of a :class:`~viridian.machine.unicorn.vcpu.Vcpu` (its methods delegate)."""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, Any

from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

from viridian.machine import interrupt_source
from viridian.machine.delivery import CONTRIBUTORY, ERROR_CODE_VECTORS, PF, CpuView, TripleFault, deliver
from viridian.machine.unicorn import engine as E
from viridian.machine.unicorn.arch_faults import df_segment_load, refine, write_access
from viridian.machine.unicorn.unassigned import reader

if TYPE_CHECKING:
    from viridian.machine.unicorn.vcpu import Vcpu


def interrupt(v: Vcpu, uc: Any, intno: int, _ud: Any) -> None:
    off = E.old_exception_offset()
    if off is not None and (intno in CONTRIBUTORY or intno in (PF, 8)):
        E.reset_old_exception(uc, off)
    rip = uc.reg_read(X.UC_X86_REG_RIP)
    if intno == 8 and (seg := df_segment_load(v, rip)) is not None:  # arch_faults.py: not a double fault
        v.df_retry = None
        v.settle_clock(rip)
        raise_exception(v, seg[0], seg[1], rip, count_exit=True, deferred=False)
        return
    if (arch := refine(v, uc, intno, rip)) is None:  # arch_faults.py: an escalated first fault runs again
        v.stop()
        return
    intno, rip = arch
    error = 0 if intno in ERROR_CODE_VECTORS else None
    if intno == PF:
        cr2 = uc.reg_read(X.UC_X86_REG_CR2)
        if cr2 == E.SPURIOUS_CR2:  # the engine's own failed translation of until - 1 (engine.py), not the guest's
            v.stats.events["engine_fault_dropped"] += 1
            uc.reg_write(X.UC_X86_REG_CR2, v.guest_cr2)
            uc.emu_stop()
            return
        v.guest_cr2 = cr2
        error = pf_error_code(v, cr2)
    v.settle_clock(rip)  # the rest of the block does not run (a fault: nor does the instruction at rip)
    at = software_interrupt_at(v, intno, rip)
    raise_exception(v, intno, error, rip, count_exit=True, deferred=False, external=at is None, insn_rip=at)


def software_interrupt(v: Vcpu, intno: int, rip: int) -> bool:
    """INT n / INT3 / INTO / INT1 (the engine reports them after the instruction, like traps): their delivery
    errors have EXT = 0; a CPU exception's have EXT = 1 (SDM vol. 2A "INT n" pseudo-code)."""
    return software_interrupt_at(v, intno, rip) is not None


def software_interrupt_at(v: Vcpu, intno: int, rip: int) -> int | None:
    """The address of the INT n / INT3 / INTO / INT1 that raised ``intno`` and ended before ``rip``, if one did
    (a fault while delivering it is reported there)."""
    before = v.read_virtual(rip - 2, 2) if rip >= 2 else None
    if before is None:
        return None
    if before == bytes((0xCD, intno)):
        return rip - 2
    return rip - 1 if before[1:] == {3: b"\xcc", 4: b"\xce", 1: b"\xf1"}.get(intno) else None


def pf_error_code(v: Vcpu, cr2: int) -> int:
    """The #PF error code of the engine's fault at ``cr2`` (the engine does not report it): the walk the engine
    made, entries outside RAM read as it reads them (all-ones: RSVD | P; a device's registers; paging.py)."""
    cr3, cr0 = v.paging()
    cpl = v.uc.reg_read(X.UC_X86_REG_CS) & 3
    pa, err = v.m.walker.walk(cr3, cr0, cr2, user=cpl == 3, io=reader(v))
    present = pa is not None or bool(err & 1)  # RSVD comes with P
    write = write_access(v)  # arch_faults.py: decoded (the engine does not report it)
    return ((1 if present else 0) | (2 if (present if write is None else write) else 0) | (4 if cpl == 3 else 0)
            | (err & 8))


def raise_exception(v: Vcpu, vector: int, error: int | None, rip: int, *, count_exit: bool = False,
                    deferred: bool = True, external: bool = True, insn_rip: int | None = None) -> None:
    """Deliver exception ``vector`` with its return address ``rip`` (a fault: the faulting instruction).
    ``deferred``: called from a hook that must not write RIP; the run loop delivers it."""
    if count_exit:
        v.count_exit("exception")
    v.stats.exceptions[vector] += 1
    if vector in ERROR_CODE_VECTORS and error is None:
        error = 0
    if v.m.tracer is not None:
        v.m.tracer.exception(v, vector, error, rip)
    if deferred:
        v.pending_exc = (vector, error, rip)
        v.stop()
    else:
        enter(v, vector, error, rip, external=external, insn_rip=insn_rip)


def enter(v: Vcpu, vector: int, error: int | None, rip: int, *, external: bool = True,
          insn_rip: int | None = None) -> bool:
    """Deliver through the guest's IDT (delivery.py; its IDT, GDT and TSS reads outside RAM see what the engine
    reads there, unassigned.read_physical); a failed #DF ends the run "triple-fault"."""
    vals = v.cpu_view.read()  # raw batch reads: interrupt delivery is an exit hot path
    idtr = v.idtr_reg.read()
    tr = v.tr_reg.read()
    gdtr = v.gdtr_reg.read()
    cpu = CpuView(rip, vals[1], vals[2], vals[3], vals[4], vals[5], vals[6], idtr[1], idtr[2], tr[1], gdtr[1],
                  gdtr[2])
    try:
        d = deliver(v.m.walker, cpu, vector, error, rip, external=external, io=reader(v), insn_rip=insn_rip)
    except TripleFault as tf:
        delivery_faults(v, tf.raised, tf.cr2)
        v.m.finish("triple-fault", vcpu=v.index, detail=str(tf), disasm=v.m.disassemble(v, rip))
        v.uc.emu_stop()
        return False
    if d.raised:
        delivery_faults(v, d.raised, d.cr2)
    if d.cs & 3 != cpu.cs & 3 and (off := E.hflags_offset()) is not None:
        E.set_cpl(v.uc, off, d.cs & 3)  # a CS/SS write cannot lower Unicorn's hidden CPL (engine.py)
    if d.cs != cpu.cs:
        v.uc.reg_write(X.UC_X86_REG_CS, d.cs)
    if d.ss is not None:
        v.uc.reg_write(X.UC_X86_REG_SS, d.ss)
    v.sp_flags.write(d.rsp, d.rflags)
    v.rip_flags.write(d.rip)  # RIP alone, a single raw write: Unicorn restarts at a PC set in a hook
    E.drop_pc_mark(v.uc)  # else the next stop at a block start keeps a stale PC (engine.py)
    return True


def delivery_faults(v: Vcpu, raised: tuple[int, ...], cr2: int | None) -> None:
    """Exceptions raised while delivering one (delivery.py: each one the CPU went on to deliver, #DF
    included) count like any other; a #PF among them wrote CR2 (SDM vol. 3A §4.7)."""
    for vector in raised:
        v.stats.exceptions[vector] += 1
    if cr2 is not None:
        v.uc.reg_write(X.UC_X86_REG_CR2, cr2)
        v.guest_cr2 = cr2


HF_INHIBIT_IRQ, HF2_NMI = 1 << 3, 1 << 2  # QEMU's hflags bit for the STI/MOV SS shadow; hflags2's NMI blocking


class HiddenFlags:
    """QEMU's hidden ``hflags``/``hflags2`` words of one engine (engine.hflags_offset), read and written through
    one reusable context with raw calls (~2 us, where the binding's context_save costs ~10 us)."""

    def __init__(self, uc: Any, offset: int) -> None:
        self._uch, self._ctx = uc._uch, uc.context_save()
        self._words = ctypes.cast(self._ctx.context, ctypes.POINTER(ctypes.c_uint32))
        self._i = offset // 4

    def read(self) -> tuple[int, int]:
        uclib.uc_context_save(self._uch, self._ctx.context)
        return int(self._words[self._i]), int(self._words[self._i + 1])

    def set_hflags2(self, bits: int, on: bool) -> None:
        uclib.uc_context_save(self._uch, self._ctx.context)
        w = self._words[self._i + 1]
        self._words[self._i + 1] = (w | bits) if on else (w & ~bits)
        uclib.uc_context_restore(self._uch, self._ctx.context)


def hidden_flags(v: Vcpu) -> HiddenFlags | None:
    if v.hidden_flags is None and (off := E.hflags_offset()) is not None:
        v.hidden_flags = HiddenFlags(v.uc, off)
    return v.hidden_flags


def nmi_blocked(v: Vcpu) -> bool:
    """NMIs are blocked from an NMI's delivery until the next IRET (SDM vol. 3 §6.7.1). The engine keeps the
    bit where QEMU does (hflags2 HF2_NMI_MASK), and its IRET clears it."""
    h = hidden_flags(v)
    return h is not None and bool(h.read()[1] & HF2_NMI)


def interruptible(v: Vcpu) -> bool:
    rip, rflags = v.rip_flags.read()
    if not rflags & (1 << 9):
        return False
    if rip == v.window_open_at:  # the window check saw this boundary open
        return True
    return rip != v.native.block_start or not in_sti_shadow(v)  # (in_sti_shadow's own first test)


def in_sti_shadow(v: Vcpu) -> bool:
    """RIP is the first instruction after an STI, MOV SS or POP SS (SDM vol. 3 §6.8.3: interrupts wait one
    instruction). QEMU ends a block after each and marks the boundary (hflags HF_INHIBIT_IRQ, cleared by the
    next block), so that is exactly: stopped at a block start with the mark set. Without the hflags offset:
    the block that ran last ended with STI (0xFB)."""
    n = v.native
    rip = v.rip_flags.read()[0]
    if rip != n.block_start:
        return False
    h = hidden_flags(v)
    if h is not None:
        return bool(h.read()[0] & HF_INHIBIT_IRQ)
    return bool(v.lib.vn_after_sti(v.uc._uch, ctypes.byref(n)))


def has_interrupt(v: Vcpu) -> bool:
    """A maskable interrupt is pending: the local APIC's, or the 8259A's ExtINT on the BSP (--machine pc)."""
    if v.apic.pending_vector() is not None:
        return True
    platform = v.m.platform
    return platform is not None and v.index == 0 and platform.extint_pending()


def inject_pending(v: Vcpu) -> bool:
    """Deliver the highest pending APIC interrupt if RFLAGS.IF and priority allow (HLT wakes here)."""
    interrupt_source.prepare(v)
    v.nmi_window = v.nmi_pending and nmi_blocked(v)  # held until IRET: the run loop runs block by block
    if v.nmi_pending and not v.nmi_window:  # NMI: not maskable by IF or TPR (SDM §6.7)
        v.nmi_pending = False
        v.halted = False
        rip = v.uc.reg_read(X.UC_X86_REG_RIP)
        if enter(v, 2, None, rip):
            if (h := hidden_flags(v)) is not None:
                h.set_hflags2(HF2_NMI, True)  # blocked until the handler's IRET (SDM vol. 3 §6.7.1)
            interrupt_source.delivered(v, 2, "nmi")
        return True
    if (source := interrupt_source.pending(v)) is None or not interruptible(v):
        return False
    v.window_open_at = None
    extint, _ = source
    vector = interrupt_source.acknowledge(v, *source)
    rip = v.rip_flags.read()[0]
    v.halted = False
    if enter(v, vector, None, rip):
        interrupt_source.delivered(v, vector, "extint" if extint else "apic")
    return True
