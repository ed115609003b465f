"""What the guest must see for an exception the engine reports (the INTR hook), where the engine's report is
not the architectural one.

- A spurious #DF. The engine never delivers an exception itself (the machine does, delivery.py), so it can
  never legitimately escalate to a double fault; yet QEMU's ``old_exception`` turns a second fault raised
  inside one instruction (a fetch at a non-canonical target, XSAVE's probe of its area and then its stores)
  or after the engine's own internal fault (engine.py: a failed translation at the end of a run) into a #DF.
  A non-canonical RIP is that fetch's #GP; a CR2 the engine changed is a #PF; otherwise the hook has reset
  ``old_exception`` and the faulting instruction (nothing of it completed) runs again once, then reports its
  own vector. A software ``INT 8`` is passed on.
- A branch to a non-canonical address. SDM vol. 2A "JMP"/"CALL"/"RET" (64-bit mode): a target that is not
  canonical raises #GP(0) at the branch, before it changes anything; the engine takes the branch and faults
  on the instruction fetch at the target. The branch is the last instruction of the block that ran last; its
  stack effect (a call's push, a ret's pop) is undone and the #GP is reported at it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from unicorn import x86_const as X

from viridian.machine.unicorn.unassigned import read_linear

if TYPE_CHECKING:
    from viridian.machine.unicorn.vcpu import Vcpu

DF, NP, SS, GP, PF = 8, 11, 12, 13, 14
MASK64 = (1 << 64) - 1


def canonical(address: int) -> bool:
    """48-bit canonical: bits 63..47 all equal (SDM vol. 1 §3.3.7.1)."""
    top = address >> 47
    return top in (0, (1 << 17) - 1)


def refine(v: Vcpu, uc: Any, intno: int, rip: int) -> tuple[int, int] | None:
    """(vector, rip) to deliver for the engine's ``intno`` at ``rip``; None: run the instruction again."""
    if intno == DF and v.read_virtual(rip - 2, 2) != b"\xcd\x08":
        if not canonical(rip):  # the fetch at a non-canonical target faulted (twice, in the engine)
            intno = GP
        elif uc.reg_read(X.UC_X86_REG_CR2) != v.guest_cr2:  # the engine wrote CR2: a #PF (e.g. XSAVE's probe
            intno = PF                                      # of its area, then its stores: two in a row)
        elif v.df_retry != rip:
            v.df_retry = rip
            v.stats.events["engine #DF retried"] += 1
            return None
    v.df_retry = None
    if intno == GP and not canonical(rip):
        branch = last_branch(v)
        if branch is not None:
            at, stack = branch
            if stack:
                uc.reg_write(X.UC_X86_REG_RSP, (uc.reg_read(X.UC_X86_REG_RSP) + stack) & MASK64)
            v.settle_clock(at)  # the branch did not complete
            return GP, at
    return intno, rip


def last_instruction(v: Vcpu, detail: bool = False) -> Any:
    """The capstone instruction that ended the block that ran last (None: not known or not decodable)."""
    from capstone import CS_ARCH_X86, CS_MODE_64, Cs

    n = v.native
    start, end = int(n.block_start), int(n.pend_end) + 1
    if not n.pend_valid or not 0 < end - start <= 0x1000:
        return None
    code = v.read_virtual(start, end - start)
    if code is None:
        return None
    last = None
    for insn in Cs(CS_ARCH_X86, CS_MODE_64).disasm(code, start):
        last = insn
    if last is None or last.address + last.size != end:
        return None
    md = Cs(CS_ARCH_X86, CS_MODE_64)
    md.detail = detail
    return next(md.disasm(bytes(last.bytes), last.address), None)


def df_segment_load(v: Vcpu, rip: int) -> tuple[int, int] | None:
    """The engine reported #DF at a MOV to a segment register whose descriptor check faults: that fault
    (vector, error code). Seen with the GDT on an MMIO page (the APIC's): the engine's first #GP was cut short
    by the MMIO read's exit and left QEMU's ``old_exception`` set, so its second one escalated."""
    code = v.read_virtual(rip, 15) or v.read_virtual(rip, 0x1000 - (rip & 0xFFF))
    if not code:
        return None
    fault = segment_load_fault(v, code, rip)
    return fault if fault is not None and fault[0] != PF else None


def ended_in_hlt(v: Vcpu) -> bool:
    """The block that ran last ended with a HLT that completed (HLT ends a block; the engine leaves after it)."""
    insn = last_instruction(v)
    return insn is not None and bytes(insn.bytes) == b"\xf4" and int(v.rip_flags.read()[0]) == insn.address + 1


def last_branch(v: Vcpu) -> tuple[int, int] | None:
    """(address, RSP correction) of the near JMP/CALL/RET that ended the block that ran last, if it did."""
    from capstone import CS_GRP_CALL, CS_GRP_JUMP, CS_GRP_RET

    insn = last_instruction(v, detail=True)
    if insn is None:
        return None
    name = insn.mnemonic
    if insn.group(CS_GRP_RET) and name in ("ret", "retq"):
        imm = insn.operands[0].imm if insn.operands else 0
        return insn.address, -(8 + imm)  # the engine popped the return address (and imm16 bytes more)
    if insn.group(CS_GRP_CALL) and name in ("call", "callq"):
        return insn.address, 8  # the engine pushed the return address
    if insn.group(CS_GRP_JUMP) and not name.startswith("ljmp"):  # jmp, jcc, loop, jrcxz (SDM: #GP(0) too)
        return insn.address, 0
    return None


def write_access(v: Vcpu) -> bool | None:
    """Whether the instruction at RIP writes memory (a store operand, or a push/call's stack write): the W/R bit
    of a #PF error code (SDM vol. 3A §4.7), which the engine does not report. None: not decodable."""
    from capstone import CS_AC_WRITE, CS_ARCH_X86, CS_MODE_64, Cs
    from capstone.x86 import X86_OP_MEM

    rip = int(v.rip_flags.read()[0])
    code = v.read_virtual(rip, 15) or v.read_virtual(rip, 0x1000 - (rip & 0xFFF))
    if not code:
        return None
    md = Cs(CS_ARCH_X86, CS_MODE_64)
    md.detail = True
    insn = next(md.disasm(code, rip), None)
    if insn is None:
        return None
    if insn.mnemonic.startswith(("push", "call", "enter")):
        return True
    return any(op.type == X86_OP_MEM and op.access & CS_AC_WRITE for op in insn.operands)


_SREG = {"ds": X.UC_X86_REG_DS, "es": X.UC_X86_REG_ES, "fs": X.UC_X86_REG_FS, "gs": X.UC_X86_REG_GS,
         "ss": X.UC_X86_REG_SS}


def segment_load_fault(v: Vcpu, code: bytes, rip: int) -> tuple[int, int] | None:
    """(vector, error code) a segment load at ``rip`` raises by its descriptor checks, when the engine stopped on
    it without reporting or reported a spurious #DF (a descriptor table the guest overlaid, read as it is in
    memory; a GDT on an MMIO page such as the APIC's). None: not such an instruction, or it loads fine.
    - MOV to DS/ES/FS/GS/SS and LSS/LFS/LGS (SDM vol. 2B "MOV", vol. 2A "LDS/LES/LFS/LGS/LSS", 64-bit mode):
      beyond the table limit or a system descriptor -> #GP(sel); DS/ES/FS/GS: an execute-only code segment,
      or a data / non-conforming code segment with DPL < max(CPL, RPL) -> #GP(sel), not present -> #NP(sel);
      SS: null only at CPL < 3 with RPL = CPL (else #GP(0)), a writable data segment with DPL = RPL = CPL
      (else #GP(sel)), not present -> #SS(sel).
    - LTR / LLDT (vol. 2A "LTR", "LLDT"): CPL > 0 -> #GP(0); LTR of null -> #GP(0) (LLDT loads it); a TI = 1
      selector or the 16-byte descriptor beyond the limit, not an available 64-bit TSS / not an LDT -> #GP(sel);
      not present -> #NP(sel).
    - far JMP/CALL through memory (vol. 2A "JMP"/"CALL"): null -> #GP(0); beyond the limit, a data segment, a
      conforming code segment with DPL > CPL, a non-conforming one with RPL > CPL or DPL != CPL, L and D both
      set, a system descriptor other than a call gate -> #GP(sel); not present -> #NP(sel). A 64-bit call gate
      (16 bytes): beyond the limit, DPL < max(CPL, RPL), a non-zero type in its upper half -> #GP(gate), not
      present -> #NP(gate); its code segment: null -> #GP(0); beyond the limit, not code, DPL > CPL (JMP:
      non-conforming with DPL != CPL), not 64-bit (L = 0 or D = 1) -> #GP(cs); not present -> #NP(cs).
    - far RET / IRET (vol. 2A "RET", "IRET"; IA-32e mode): the CS popped from the stack: null -> #GP(0); beyond
      the limit, not code, RPL < CPL, conforming with DPL > RPL, non-conforming with DPL != RPL, L and D both
      set -> #GP(sel); not present -> #NP(sel)."""
    from capstone import CS_ARCH_X86, CS_MODE_64, Cs

    md = Cs(CS_ARCH_X86, CS_MODE_64)
    md.detail = True
    insn = next(md.disasm(code, rip, 1), None)
    if insn is None:
        return None
    ops, name = insn.operands, insn.mnemonic
    cpl = int(v.uc.reg_read(X.UC_X86_REG_CS)) & 3
    if name in ("retf", "retfq", "lret", "lretq", "iret", "iretd", "iretq"):
        size = 8 if insn.rex & 8 or name.endswith("q") else 2 if insn.prefix[2] == 0x66 else 4
        rsp = int(v.uc.reg_read(X.UC_X86_REG_RSP))
        word = read_linear(v, (rsp + size) & MASK64, 2)  # the CS slot above the return RIP
        return None if word is None else _return_cs(v, int.from_bytes(word, "little"), cpl)
    if not ops:
        return None
    if name == "mov" and len(ops) == 2 and ops[0].type == 1 and insn.reg_name(ops[0].reg) in _SREG:
        kind, src, at = insn.reg_name(ops[0].reg), ops[1], 0
    elif name in ("lss", "lfs", "lgs") and len(ops) == 2:
        kind, src, at = name[1:], ops[1], ops[0].size  # m16:16/32/64: the selector after the offset
    elif name in ("ltr", "lldt"):
        kind, src, at = name[1:], ops[0], 0
    elif insn.opcode[0] == 0xFF and (insn.modrm >> 3) & 7 in (3, 5) and ops[0].type == 3:
        kind, src = ("call" if (insn.modrm >> 3) & 7 == 3 else "jmp"), ops[0]  # FF /3, FF /5: m16:32 or m16:64
        at = 8 if insn.rex & 8 else 4
    else:
        return None
    if src.type == 1:
        sel = int(v.uc.reg_read(getattr(X, "UC_X86_REG_" + insn.reg_name(src.reg).upper()))) & 0xFFFF
    else:  # the selector from memory (its own #PF is the engine's to report)
        from viridian.machine.unicorn.lost_fault import memory_operands

        operands = memory_operands(v.uc, code, rip)
        word = read_linear(v, (operands[0][0] + at) & MASK64, 2) if operands else None
        if word is None:
            return None
        sel = int.from_bytes(word, "little")
    rpl, err = sel & 3, sel & 0xFFFC
    if kind in ("tr", "ldt") and cpl:
        return GP, 0
    if sel & ~3 == 0:
        if kind == "ss":
            return None if cpl < 3 and rpl == cpl else (GP, 0)
        return (GP, 0) if kind in ("tr", "call", "jmp") else None  # DS/ES/FS/GS and LDTR take a null selector
    desc = _descriptor(v, sel, 16 if kind in ("tr", "ldt") else 8)
    if isinstance(desc, tuple):
        return desc
    access, flags = desc[5], desc[6]
    present, dpl, system, code_seg = access >> 7, (access >> 5) & 3, not access & 0x10, bool(access & 8)
    if kind in ("tr", "ldt"):
        if access & 0x1F != (0x09 if kind == "tr" else 0x02):  # S = 0, type 9 (available 64-bit TSS) / 2 (LDT)
            return GP, err
        return (NP, err) if not present else None
    if kind in ("call", "jmp"):
        if system:
            return _call_gate(v, sel, access, cpl, kind) if access & 0xF == 0xC else (GP, err)
        if not code_seg or flags & 0x60 == 0x60:  # data, or L = D = 1
            return GP, err
        if (access & 4 and dpl > cpl) or (not access & 4 and (rpl > cpl or dpl != cpl)):
            return GP, err
        return (NP, err) if not present else None
    if system:
        return GP, err
    if kind == "ss":
        if code_seg or not access & 2 or not (dpl == rpl == cpl):
            return GP, err
        return (SS, err) if not present else None
    if code_seg and not access & 2:
        return GP, err
    if (not code_seg or not access & 4) and dpl < max(cpl, rpl):
        return GP, err
    return (NP, err) if not present else None


def _descriptor(v: Vcpu, sel: int, size: int = 8) -> bytes | tuple[int, int]:
    """The GDT descriptor of ``sel`` as the engine reads it (outside RAM too), or the fault its lookup raises:
    a TI = 1 selector (no LDT is modelled) or one beyond the limit -> #GP(sel); the table not mapped -> #PF."""
    _s, base, limit, _f = v.uc.reg_read(X.UC_X86_REG_GDTR)
    if sel & 4 or (sel | 7) + size - 8 > limit:
        return GP, sel & 0xFFFC
    raw = read_linear(v, base + (sel & ~7), size)  # outside RAM: what the engine read (the APIC's registers...)
    if raw is None:
        return PF, 0  # the table itself is not mapped: a #PF on the descriptor read (CR2 left to the walker)
    return raw


def _call_gate(v: Vcpu, sel: int, access: int, cpl: int, kind: str) -> tuple[int, int] | None:
    """A far CALL/JMP through the 64-bit call gate ``sel`` (SDM vol. 2A "CALL" / "JMP", IA-32e mode)."""
    gate = _descriptor(v, sel, 16)
    err = sel & 0xFFFC
    if isinstance(gate, tuple):
        return gate
    if (access >> 5) & 3 < max(cpl, sel & 3) or gate[13] & 0x1F:
        return GP, err
    if not access >> 7:
        return NP, err
    target = int.from_bytes(gate[2:4], "little")
    if target & ~3 == 0:
        return GP, 0
    desc = _descriptor(v, target, 8)
    if isinstance(desc, tuple):
        return desc
    t_access, t_flags, t_err = desc[5], desc[6], target & 0xFFFC
    t_dpl = (t_access >> 5) & 3
    if t_access & 0x18 != 0x18 or t_dpl > cpl or (kind == "jmp" and not t_access & 4 and t_dpl != cpl):
        return GP, t_err
    if not t_access >> 7:
        return NP, t_err
    return (GP, t_err) if t_flags & 0x60 != 0x20 else None  # L = 1, D = 0


def _return_cs(v: Vcpu, sel: int, cpl: int) -> tuple[int, int] | None:
    """The return code segment of a far RET / IRET (see :func:`segment_load_fault`)."""
    if sel & ~3 == 0:
        return GP, 0
    desc = _descriptor(v, sel)
    if isinstance(desc, tuple):
        return desc
    access, flags, rpl, err = desc[5], desc[6], sel & 3, sel & 0xFFFC
    dpl = (access >> 5) & 3
    if access & 0x18 != 0x18 or rpl < cpl or (access & 4 and dpl > rpl) or (not access & 4 and dpl != rpl):
        return GP, err
    if not access >> 7:
        return NP, err
    return (GP, err) if flags & 0x60 == 0x60 else None
