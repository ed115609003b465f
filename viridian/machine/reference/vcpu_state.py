"""Facts the engine does not report, recovered by decoding the instruction (capstone) and walking the guest's
page tables: a #PF's error code (W/R is not exposed; SDM vol. 3A §4.7), and a fault the engine lost (engine
fact, copied from the fast engine's lost_fault.py: Unicorn 2.1.4 sometimes returns from emu_start at a
faulting instruction without reporting the #PF; the instruction's accesses are checked against the page
tables and the fault they raise is delivered)."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

import capstone
from capstone import x86_const as CX
from unicorn import x86_const as X

if TYPE_CHECKING:
    from viridian.machine.reference.vcpu import Vcpu

MASK64 = (1 << 64) - 1


@cache
def _md() -> capstone.Cs:
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.detail = True
    return md


def _decode(v: Vcpu, rip: int) -> Any:
    code = v.read_virtual(rip, 15) or v.read_virtual(rip, 0x1000 - (rip & 0xFFF))
    return next(_md().disasm(code, rip, 1), None) if code else None


def write_access(v: Vcpu, rip: int) -> bool | None:
    """Whether the instruction at ``rip`` writes memory (None: not decodable)."""
    insn = _decode(v, rip)
    if insn is None:
        return None
    if insn.mnemonic.startswith(("push", "call", "enter")):
        return True
    return any(op.type == CX.X86_OP_MEM and op.access & capstone.CS_AC_WRITE for op in insn.operands)


def pf_error_code(v: Vcpu, cr2: int) -> int:
    """P from the page walk, W/R from the instruction, U/S from the CPL (SDM vol. 3A §4.7)."""
    from viridian.machine.reference.arch import pf_walk_error  # the walk reads what the CPU reads (RSVD too)

    return pf_walk_error(v, cr2, write_access(v, v.rip_flags()[0]))


def _reg(v: Vcpu, reg: int, next_rip: int) -> int:
    if reg == 0:
        return 0
    if reg == CX.X86_REG_RIP:
        return next_rip
    uid = getattr(X, "UC_X86_REG_" + _md().reg_name(reg).upper(), None)
    return int(v.eng.uc.reg_read(uid)) if uid is not None else 0


def _operands(v: Vcpu, insn: Any) -> list[tuple[int, int, bool]]:
    out: list[tuple[int, int, bool]] = []
    nxt = insn.address + insn.size
    for op in insn.operands:
        if op.type != CX.X86_OP_MEM:
            continue
        m = op.mem
        addr = _reg(v, m.base, nxt) + _reg(v, m.index, nxt) * (m.scale or 1) + m.disp
        if m.segment == CX.X86_REG_FS:
            addr += int(v.eng.uc.msr_read(0xC000_0100))
        elif m.segment == CX.X86_REG_GS:
            addr += int(v.eng.uc.msr_read(0xC000_0101))
        size = max(1, op.size)
        if insn.mnemonic.startswith(("xsave", "xrstor", "fxsave", "fxrstor")):
            size = 512 if insn.mnemonic.startswith("fx") else 576  # SDM vol. 1 §13.4
        out.append((addr & MASK64, size, bool(op.access & capstone.CS_AC_WRITE)))
    if insn.mnemonic.startswith(("push", "call")):
        out.append(((int(v.eng.uc.reg_read(X.UC_X86_REG_RSP)) - 8) & MASK64, 8, True))
    return out


def lost_fault(v: Vcpu, rip: int) -> bool:
    """Deliver the exception the engine swallowed at ``rip``; False when none can be named."""
    from viridian.machine.reference import events as EV
    from viridian.machine.reference import traps as T

    cr3, cr0 = v.paging()
    cpl = int(v.eng.uc.reg_read(X.UC_X86_REG_CS)) & 3
    insn = _decode(v, rip)
    if insn is None:  # the fetch itself faults (SDM vol. 3A §4.7: I/D set with NXE or SMEP)
        if not EV.canonical(rip) or v.m.walker.translate(cr3, cr0, rip) is not None:
            return False
        v.eng.uc.reg_write(X.UC_X86_REG_CR2, rip)
        v.guest_cr2 = rip
        fetch = 0x10 if v.efer >> 11 & 1 or int(v.eng.uc.reg_read(X.UC_X86_REG_CR4)) >> 20 & 1 else 0
        return _deliver(v, 14, fetch | (4 if cpl == 3 else 0), rip)
    ops = _operands(v, insn)
    for addr, size, _w in ops:  # SDM vol. 1 §3.3.7.1: a non-canonical address raises #GP(0)
        if not EV.canonical(addr) or not EV.canonical((addr + size - 1) & MASK64):
            return _deliver(v, 13, 0, rip)
    for addr, size, write in ops:  # the first byte of each page the access touches, in order
        for probe in [addr, *range((addr & ~0xFFF) + 0x1000, addr + size, 0x1000)]:
            if v.m.walker.translate(cr3, cr0, probe, write) is None:
                v.eng.uc.reg_write(X.UC_X86_REG_CR2, probe)
                v.guest_cr2 = probe
                present = v.m.walker.translate(cr3, cr0, probe) is not None
                return _deliver(v, 14, int(present) | (2 if write else 0) | (4 if cpl == 3 else 0), rip)
    code = bytes(insn.bytes)
    if code[:3] in (T.VMCALL, T.VMMCALL):
        T.invalid(v)
        v.stop_requested = False
        EV.apply_deferred(v)
        return True
    name = insn.mnemonic
    vector, ret = {"ud2": (6, rip), "div": (0, rip), "idiv": (0, rip), "int3": (3, rip + insn.size)}.get(
        name, (-1, rip))
    if name == "int":
        vector, ret = code[1], rip + insn.size
    if vector < 0:
        return False
    v.stats.events["lost_fault_recovered"] += 1
    EV.raise_exception(v, vector, None, ret, count_exit=True, deferred=False)
    return True


def _deliver(v: Vcpu, vector: int, error: int, rip: int) -> bool:
    from viridian.machine.reference import events as EV

    v.stats.events["lost_fault_recovered"] += 1
    v.fault_state_dirty = True
    EV.raise_exception(v, vector, error, rip, count_exit=True, deferred=False)  # an exit: EXIT_TICKS like any
    return True
