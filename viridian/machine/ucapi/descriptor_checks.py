"""Engine-neutral x86 checks the machine makes itself where an engine stops on an instruction without reporting
its fault (or reports a spurious #DF): a segment load's descriptor checks (SDM vol. 2A/2B, below) and the
linear addresses of an instruction's memory operands. Pure decoding (capstone) over the public Unicorn register
API (``uc.reg_read`` / ``uc.msr_read``) and a linear-address reader the engine supplies (the guest's page
tables, outside RAM too): both engines (unicorn/arch_faults.py, lost_fault.py; reference/arch.py) use these."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Any

from unicorn import x86_const as X

if TYPE_CHECKING:
    import capstone

NP, SS, GP, PF = 11, 12, 13, 14
MASK64 = (1 << 64) - 1
LinearRead = Callable[[int, int], "bytes | None"]  # (linear address, length) -> bytes, None: not mapped


def canonical(address: int) -> bool:
    """48-bit canonical: bits 63..47 all equal (SDM vol. 1 §3.3.7.1)."""
    return (address >> 47) in (0, (1 << 17) - 1)


@cache
def disassembler() -> capstone.Cs:
    import capstone  # here, not at module level: ~0.1 s of every start-up, for a rare recovery

    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.detail = True
    return md


def _reg(uc: Any, md: capstone.Cs, reg: int, next_rip: int) -> int:
    from capstone import x86_const as CX

    if reg == 0:
        return 0
    if reg == CX.X86_REG_RIP:
        return next_rip
    uid = getattr(X, "UC_X86_REG_" + md.reg_name(reg).upper(), None)
    return int(uc.reg_read(uid)) if uid is not None else 0


def memory_operands(uc: Any, code: bytes, rip: int) -> list[tuple[int, int, bool]]:
    """(linear address, size, is_write) of each memory operand of the instruction at ``rip``."""
    import capstone
    from capstone import x86_const as CX

    md = disassembler()
    out: list[tuple[int, int, bool]] = []
    for insn in md.disasm(code, rip, 1):
        nxt = rip + insn.size
        for op in insn.operands:
            if op.type != CX.X86_OP_MEM:
                continue
            m = op.mem
            addr = _reg(uc, md, m.base, nxt) + _reg(uc, md, m.index, nxt) * (m.scale or 1) + m.disp
            if m.segment == CX.X86_REG_FS:
                addr += uc.msr_read(0xC000_0100)
            elif m.segment == CX.X86_REG_GS:
                addr += uc.msr_read(0xC000_0101)
            write = bool(op.access & capstone.CS_AC_WRITE)
            size = max(1, op.size)
            if insn.mnemonic.startswith(("xsave", "xrstor", "fxsave", "fxrstor")):
                size = 512 if insn.mnemonic.startswith("fx") else 576  # SDM vol. 1 §13.4: legacy area + header
            out.append((addr & 0xFFFF_FFFF_FFFF_FFFF, size, write))
        if insn.mnemonic.startswith("push") or insn.mnemonic.startswith("call"):
            out.append(((uc.reg_read(X.UC_X86_REG_RSP) - 8) & 0xFFFF_FFFF_FFFF_FFFF, 8, True))
    return out


_SREG = {"ds": X.UC_X86_REG_DS, "es": X.UC_X86_REG_ES, "fs": X.UC_X86_REG_FS, "gs": X.UC_X86_REG_GS,
         "ss": X.UC_X86_REG_SS}


def segment_load_fault(uc: Any, read: LinearRead, code: bytes, rip: int) -> tuple[int, int] | None:
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
    cpl = int(uc.reg_read(X.UC_X86_REG_CS)) & 3
    if name in ("retf", "retfq", "lret", "lretq", "iret", "iretd", "iretq"):
        size = 8 if insn.rex & 8 or name.endswith("q") else 2 if insn.prefix[2] == 0x66 else 4
        rsp = int(uc.reg_read(X.UC_X86_REG_RSP))
        word = read((rsp + size) & MASK64, 2)  # the CS slot above the return RIP
        return None if word is None else _return_cs(uc, read, int.from_bytes(word, "little"), cpl)
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
        sel = int(uc.reg_read(getattr(X, "UC_X86_REG_" + insn.reg_name(src.reg).upper()))) & 0xFFFF
    else:  # the selector from memory (its own #PF is the engine's to report)
        operands = memory_operands(uc, code, rip)
        word = read((operands[0][0] + at) & MASK64, 2) if operands else None
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
    desc = _descriptor(uc, read, sel, 16 if kind in ("tr", "ldt") else 8)
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
            return _call_gate(uc, read, sel, access, cpl, kind) if access & 0xF == 0xC else (GP, err)
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


def _descriptor(uc: Any, read: LinearRead, sel: int, size: int = 8) -> bytes | tuple[int, int]:
    """The GDT descriptor of ``sel`` as the engine reads it (outside RAM too), or the fault its lookup raises:
    a TI = 1 selector (no LDT is modelled) or one beyond the limit -> #GP(sel); the table not mapped -> #PF."""
    _s, base, limit, _f = uc.reg_read(X.UC_X86_REG_GDTR)
    if sel & 4 or (sel | 7) + size - 8 > limit:
        return GP, sel & 0xFFFC
    raw = read(base + (sel & ~7), size)  # outside RAM: what the engine read (the APIC's registers...)
    if raw is None:
        return PF, 0  # the table itself is not mapped: a #PF on the descriptor read (CR2 left to the walker)
    return raw


def _call_gate(uc: Any, read: LinearRead, sel: int, access: int, cpl: int, kind: str) -> tuple[int, int] | None:
    """A far CALL/JMP through the 64-bit call gate ``sel`` (SDM vol. 2A "CALL" / "JMP", IA-32e mode)."""
    gate = _descriptor(uc, read, sel, 16)
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
    desc = _descriptor(uc, read, target, 8)
    if isinstance(desc, tuple):
        return desc
    t_access, t_flags, t_err = desc[5], desc[6], target & 0xFFFC
    t_dpl = (t_access >> 5) & 3
    if t_access & 0x18 != 0x18 or t_dpl > cpl or (kind == "jmp" and not t_access & 4 and t_dpl != cpl):
        return GP, t_err
    if not t_access >> 7:
        return NP, t_err
    return (GP, t_err) if t_flags & 0x60 != 0x20 else None  # L = 1, D = 0


def _return_cs(uc: Any, read: LinearRead, sel: int, cpl: int) -> tuple[int, int] | None:
    """The return code segment of a far RET / IRET (see :func:`segment_load_fault`)."""
    if sel & ~3 == 0:
        return GP, 0
    desc = _descriptor(uc, read, sel)
    if isinstance(desc, tuple):
        return desc
    access, flags, rpl, err = desc[5], desc[6], sel & 3, sel & 0xFFFC
    dpl = (access >> 5) & 3
    if access & 0x18 != 0x18 or rpl < cpl or (access & 4 and dpl > rpl) or (not access & 4 and dpl != rpl):
        return GP, err
    if not access >> 7:
        return NP, err
    return (GP, err) if flags & 0x60 == 0x60 else None
