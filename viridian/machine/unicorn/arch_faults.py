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

from viridian.machine.ucapi import descriptor_checks
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


def segment_load_fault(v: Vcpu, code: bytes, rip: int) -> tuple[int, int] | None:
    """(vector, error code) a segment load at ``rip`` raises by its descriptor checks (the SDM checks live in the
    engine-neutral viridian/machine/ucapi/descriptor_checks.py; descriptors read as the engine reads them)."""
    return descriptor_checks.segment_load_fault(v.uc, lambda a, n: read_linear(v, a, n), code, rip)
