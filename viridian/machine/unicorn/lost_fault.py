"""Recovering page faults (and non-canonical #GPs) Unicorn loses (engine notes, hazard 2: "emu_start returns at the same RIP and the
#PF never reaches the exception hook"). When the engine stops at an instruction for no reason it reports,
we decode the instruction (capstone), compute its memory operands and walk the guest page tables; a
non-present or read-only translation is the page fault the guest must see."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from unicorn import x86_const as X

from viridian.machine.backend import EXIT_TICKS
from viridian.machine.ucapi.descriptor_checks import disassembler, memory_operands
from viridian.machine.unicorn.arch_faults import refine, segment_load_fault

STOP_ROUNDS = 8  # engine stops resumed at one RIP with no instruction completed in between, at most

if TYPE_CHECKING:
    from viridian.machine.unicorn.vcpu import Vcpu


def classify(uc: Any, code: bytes, rip: int) -> tuple[str, int]:
    """What the instruction at ``rip`` raises when the engine stopped on it without reporting:
    ("ud"|"de"|"bp"|"int"|"hypercall"|"other", length)."""
    if code[:2] == b"\x0f\x0b":
        return "ud", 2
    if code[:3] in (b"\x0f\x01\xc1", b"\x0f\x01\xd9"):
        return "hypercall", 3
    md = disassembler()
    for insn in md.disasm(code, rip, 1):
        if insn.mnemonic in ("div", "idiv"):
            return "de", insn.size
        if insn.mnemonic == "int3":
            return "bp", insn.size
        if insn.mnemonic == "int":
            return "int", insn.size
        return "other", insn.size
    return "ud", 1


def _canonical(addr: int) -> bool:
    top = addr >> 47
    return top == 0 or top == 0x1FFFF


def recover_lost_fault(v: Vcpu, rip: int) -> bool:
    """Deliver the exception the engine swallowed at ``rip`` (#PF, #UD, #DE, #BP, INT n, or a hypercall)."""
    code = v.read_virtual(rip, 15) or v.read_virtual(rip, 1)
    if not code:
        return fetch_fault(v, rip)
    cr3, cr0 = v.paging()
    operands = memory_operands(v.uc, code, rip)
    for addr, size, _write in operands:  # SDM 3.3.7.1: a non-canonical address raises #GP(0) (#SS for RSP)
        if any(not _canonical(p) for p in (addr, (addr + size - 1) & 0xFFFF_FFFF_FFFF_FFFF)):
            v.stats.events["lost_fault_recovered"] += 1
            v.raise_exception(13, 0, rip, count_exit=True, deferred=False)
            return True
    for addr, size, write in operands:  # the first byte of each page the access touches, in order
        for probe in [addr, *range((addr & ~0xFFF) + 0x1000, addr + size, 0x1000)]:
            if v.m.walker.translate(cr3, cr0, probe, write) is None:
                v.uc.reg_write(X.UC_X86_REG_CR2, probe)
                present = v.m.walker.translate(cr3, cr0, probe) is not None
                cpl = v.uc.reg_read(X.UC_X86_REG_CS) & 3
                err = int(present) | (2 if write else 0) | (4 if cpl == 3 else 0)
                v.stats.events["lost_fault_recovered"] += 1
                v.raise_exception(14, err, rip, count_exit=True, deferred=False)
                return True
    seg = segment_load_fault(v, code, rip)  # arch_faults.py: a descriptor the guest's own table made invalid
    if seg is not None and seg[0] != 14:
        v.stats.events["lost_fault_recovered"] += 1
        v.raise_exception(seg[0], seg[1], rip, count_exit=True, deferred=False)
        return True
    kind, length = classify(v.uc, code, rip)
    if kind == "hypercall":
        v.traps.on_invalid(v.uc, None)
        v.apply_deferred()
        return True
    vector, ret = {"ud": (6, rip), "de": (0, rip), "bp": (3, rip + length)}.get(kind, (-1, rip))
    if kind == "int":
        vector, ret = code[1], rip + length
    if vector < 0:
        return False
    v.stats.events["lost_fault_recovered"] += 1
    v.raise_exception(vector, None, ret, count_exit=True, deferred=False)
    return True


def fetch_fault(v: Vcpu, rip: int) -> bool:
    """The instruction at ``rip`` cannot be fetched through the guest's page tables (e.g. they were overlaid):
    #PF at ``rip`` with CR2 = ``rip`` (SDM vol. 3A §4.7: I/D set for a fetch when NXE or SMEP is on)."""
    if not _canonical(rip):  # a branch to a non-canonical target: #GP(0) at the branch (arch_faults.py)
        arch = refine(v, v.uc, 13, rip)
        if arch is None:
            return False
        v.stats.events["lost_fault_recovered"] += 1
        v.raise_exception(arch[0], 0, arch[1], count_exit=True, deferred=False)
        return True
    cr3, cr0 = v.paging()
    if v.m.walker.translate(cr3, cr0, rip) is not None:
        return False  # mapped (the read failed for another reason): not a fetch fault we can name
    cr4 = int(v.uc.reg_read(X.UC_X86_REG_CR4))
    cpl = v.uc.reg_read(X.UC_X86_REG_CS) & 3
    fetch = 0x10 if (v.efer >> 11) & 1 or (cr4 >> 20) & 1 else 0
    v.uc.reg_write(X.UC_X86_REG_CR2, rip)
    v.guest_cr2 = rip
    v.stats.events["lost_fault_recovered"] += 1
    v.raise_exception(14, fetch | (4 if cpl == 3 else 0), rip, count_exit=True, deferred=False)
    return True


def resume_stop(v: Vcpu, rip: int) -> bool:
    """The engine stopped at ``rip`` with nothing to report and nothing recovered: run on from there, at most
    STOP_ROUNDS times in a row without progress (then False: the run ends "error", never a hang). Progress
    is any instruction byte counted since the last such stop at ``rip``: a clock that moved only by whole
    exits (an MMIO read the instruction made before the engine gave up on it) is none. Measured: a page MSR
    moving an overlay onto the GDT's page stops the engine after the WRMSR with nothing to report."""
    clock = int(v.native.bytes)
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
