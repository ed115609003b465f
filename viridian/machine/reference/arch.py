"""Architectural answers for guest actions the engine stops on without one (the reference engine's side of the
fast engine's unicorn/arch_faults.py, lost_fault.py and unassigned.py; the SDM checks themselves are shared in
viridian/machine/ucapi/descriptor_checks.py):

- What the CPU reads outside RAM (a descriptor table or page table on the APIC page or unassigned memory):
  the bytes the engine's memory core answers there (a device's MMIO callback; all-ones where nothing is
  mapped, QEMU's PCI master abort). Used by delivery (``deliver(io=...)``), the #PF error code's walk and
  the descriptor checks.
- A segment load whose descriptor check faults (MOV Sreg, LSS/LFS/LGS, LTR/LLDT, far JMP/CALL/RET, IRET):
  the engine stops on it without a report, or reports a spurious #DF (the check's MMIO read cut its own #GP
  short). That fault at the instruction.
- A near branch to a non-canonical address: #GP(0) at the branch with its stack effect undone (SDM vol. 2A
  "JMP"/"CALL"/"RET", 64-bit mode); the engine takes it and stops at the target.
- A fetch from unassigned memory or a device page: #UD at the fetch address (unassigned.py's answer).
- A stop with nothing to name is resumed at most STOP_ROUNDS times without an instruction byte completing
  (lost_fault.resume_stop's rule): then the run ends "error", never a hang.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

import capstone
from unicorn import UC_ERR_FETCH_PROT, UC_ERR_FETCH_UNMAPPED, UcError
from unicorn import x86_const as X

from viridian.machine.backend import EXIT_TICKS
from viridian.machine.paging import PhysRead
from viridian.machine.ucapi import descriptor_checks as D

if TYPE_CHECKING:
    from viridian.machine.reference.vcpu import Vcpu

GP, PF = 13, 14
MASK64 = (1 << 64) - 1
STOP_ROUNDS = 8  # as unicorn/lost_fault.py: resumed stops at one RIP without progress, at most


@cache
def _md() -> capstone.Cs:
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.detail = True
    return md


def read_physical(v: Vcpu, pa: int, length: int) -> bytes:
    """The bytes the CPU reads at guest-physical ``pa``: RAM, a device through its MMIO callback, all-ones on
    unassigned memory (QEMU's master abort)."""
    out = bytearray()
    ram = v.m.walker.ram
    while length > 0:
        chunk = min(length, 0x1000 - (pa & 0xFFF))
        if pa + chunk <= v.m.ram_size:
            out += ram[pa : pa + chunk]
        else:
            try:
                out += v.eng.uc.mem_read(pa, chunk)
            except UcError:
                out += b"\xff" * chunk
        pa, length = pa + chunk, length - chunk
    return bytes(out)


def reader(v: Vcpu) -> PhysRead:
    return lambda pa, length: read_physical(v, pa, length)


def read_linear(v: Vcpu, vaddr: int, length: int) -> bytes | None:
    """Bytes at a linear address through the guest's page tables, outside RAM too (None: not mapped)."""
    cr3, cr0 = v.paging()
    return v.m.walker.read(cr3, cr0, vaddr, length, reader(v))


def segment_fault(v: Vcpu, rip: int) -> tuple[int, int] | None:
    """(vector, error code) of a segment load at ``rip`` whose descriptor check faults (not a #PF on the table
    read: that one is the engine's)."""
    code = v.read_virtual(rip, 15) or v.read_virtual(rip, 0x1000 - (rip & 0xFFF))
    if not code:
        return None
    fault = D.segment_load_fault(v.eng.uc, lambda a, n: read_linear(v, a, n), code, rip)
    return fault if fault is not None and fault[0] != PF else None


def last_branch(v: Vcpu) -> tuple[int, int] | None:
    """(address, RSP correction) of the near JMP/Jcc/CALL/RET that ended the block that ran last."""
    from viridian.machine.reference.events import _last_insn_of_current

    last = _last_insn_of_current(v)
    if last is None:
        return None
    insn = next(_md().disasm(bytes(last.bytes), last.address), None)
    if insn is None:
        return None
    name = insn.mnemonic
    if insn.group(capstone.CS_GRP_RET) and name in ("ret", "retq"):
        imm = insn.operands[0].imm if insn.operands else 0
        return insn.address, -(8 + imm)
    if insn.group(capstone.CS_GRP_CALL) and name in ("call", "callq"):
        return insn.address, 8
    if insn.group(capstone.CS_GRP_JUMP) and not name.startswith("ljmp"):
        return insn.address, 0
    return None


def non_canonical_branch(v: Vcpu) -> int | None:
    """RIP is not canonical after a near branch: undo the branch's stack effect, take its bytes back from the
    clock, and return its address (where #GP(0) is raised); None: not a branch we can name."""
    branch = last_branch(v)
    if branch is None:
        return None
    at, stack = branch
    uc = v.eng.uc
    if stack:
        uc.reg_write(X.UC_X86_REG_RSP, (int(uc.reg_read(X.UC_X86_REG_RSP)) + stack) & MASK64)
    v.settle(at)  # the branch did not complete (the delivery writes RIP, not this hook)
    return at


def natural_stop(v: Vcpu, rip: int) -> bool:
    """The engine stopped at ``rip`` with nothing to report: deliver the architectural fault, if there is one."""
    if not D.canonical(rip):
        at = non_canonical_branch(v)
        if at is None:
            return False
        _recovered(v, GP, 0, at)
        return True
    seg = segment_fault(v, rip)
    if seg is not None:
        _recovered(v, seg[0], seg[1], rip)
        return True
    return False


def _recovered(v: Vcpu, vector: int, error: int, rip: int) -> None:
    from viridian.machine.reference import events as EV

    v.stats.events["lost_fault_recovered"] += 1
    EV.raise_exception(v, vector, error, rip, count_exit=True, deferred=False)  # an exit: EXIT_TICKS like any


def resume_stop(v: Vcpu, rip: int) -> bool:
    """Run on from an unexplained stop at ``rip`` at most STOP_ROUNDS times in a row with no instruction byte
    completed (the clock moved by whole exits only); then False: the run ends "error"."""
    clock = v.bytes
    last = v.unexplained_stop
    rounds = 0
    if last is not None and last[0] == rip:
        moved = clock - last[1]
        if 0 <= moved <= 16 * EXIT_TICKS and moved % EXIT_TICKS == 0:
            rounds = last[2] + 1
    if rounds >= STOP_ROUNDS:
        v.unexplained_stop = None
        return False
    v.unexplained_stop = (rip, clock, rounds)
    v.stats.events["engine stop resumed"] += 1
    return True


def fetch_fault(v: Vcpu, exc: UcError) -> bool:
    """The engine could not fetch at RIP: outside RAM (unassigned memory or a device page) that is #UD at the
    fetch address (unassigned.py: all-ones = FF /7, undefined; device registers are not executed). False:
    another engine error."""
    if exc.errno not in (UC_ERR_FETCH_UNMAPPED, UC_ERR_FETCH_PROT):
        return False
    rip = int(v.eng.uc.reg_read(X.UC_X86_REG_RIP))
    cr3, cr0 = v.paging()
    pa = v.m.walker.translate(cr3, cr0, rip)
    if pa is None:
        return False
    if pa < v.m.ram_size:  # an instruction from RAM into memory outside it (edge.py)
        from viridian.machine.reference.edge import stop

        return stop(v, rip)
    v.stats.events["fetch from a device page" if _device(v, pa) else "fetch from unassigned memory"] += 1
    from viridian.machine.reference import events as EV

    v.settle(rip)
    EV.raise_exception(v, 6, None, rip, count_exit=True, deferred=False)
    return True


def _device(v: Vcpu, pa: int) -> bool:
    page = pa & ~0xFFF
    return page in v.eng.apic_pages or (not any(b <= pa < b + s for b, s in v.eng.unassigned) and any(
        b <= pa <= e for b, e, _p in v.eng.uc.mem_regions()))


def delivery_faults(v: Vcpu, raised: tuple[int, ...], cr2: int | None) -> None:
    """Exceptions raised while delivering one (delivery.py ``raised``) count; a #PF among them writes CR2."""
    for vector in raised:
        v.stats.exceptions[vector] += 1
    if cr2 is not None:
        v.eng.uc.reg_write(X.UC_X86_REG_CR2, cr2)
        v.guest_cr2 = cr2


def pf_walk_error(v: Vcpu, cr2: int, write: bool | None) -> int:
    """The #PF error code of the engine's fault at ``cr2``: the walk the engine made (outside RAM through
    :func:`read_physical`, reserved bits -> RSVD), W/R from the instruction, U/S from the CPL (SDM vol. 3A §4.7)."""
    cr3, cr0 = v.paging()
    cpl = int(v.eng.uc.reg_read(X.UC_X86_REG_CS)) & 3
    pa, err = v.m.walker.walk(cr3, cr0, cr2, user=cpl == 3, io=reader(v))
    present = pa is not None or bool(err & 1)  # RSVD comes with P
    return ((1 if present else 0) | (2 if (present if write is None else write) else 0) | (4 if cpl == 3 else 0)
            | (err & 8))



def software_interrupt_at(v: Vcpu, vector: int, rip: int) -> int | None:
    """The INT n / INT3 / INTO / INT1 that raised ``vector`` and ended right before ``rip``: a fault while
    delivering it is reported at that instruction (SDM vol. 2A "INT n"; as unicorn/vcpu_delivery.py)."""
    before = v.read_virtual(rip - 2, 2) if rip >= 2 else None
    if before is None:
        return None
    if before == bytes((0xCD, vector)):
        return rip - 2
    return rip - 1 if before[1:] == {3: b"\xcc", 4: b"\xce", 1: b"\xf1"}.get(vector) else None
