"""Exception and interrupt delivery through the guest's 64-bit IDT (SDM vol. 3 §6.14), done by the machine
because Unicorn hands exceptions to a hook instead of delivering them."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from viridian.machine.paging import PageWalker, PhysRead

ERROR_CODE_VECTORS: Final = frozenset({8, 10, 11, 12, 13, 14, 17, 21})
CONTRIBUTORY: Final = frozenset({0, 10, 11, 12, 13})
DF, NP, GP, PF = 8, 11, 13, 14
IF, TF, NT, RF = 1 << 9, 1 << 8, 1 << 14, 1 << 16


class TripleFault(Exception):
    """Delivery of #DF failed: the processor would shut down. ``raised``: the exceptions delivery raised on the
    way (each fault it tried to deliver after the first, #DF included); ``cr2``: a #PF's address, if one was."""

    def __init__(self, message: str, raised: tuple[int, ...] = (), cr2: int | None = None) -> None:
        super().__init__(message)
        self.raised, self.cr2 = raised, cr2


@dataclass
class CpuView:
    """The registers delivery reads (one batch read) and the frame it produces."""

    rip: int
    rsp: int
    rflags: int
    cs: int
    ss: int
    cr0: int
    cr3: int
    idt_base: int
    idt_limit: int
    tss_base: int
    gdt_base: int | None = None  # None: the gate's code segment is not checked (engine-free tests)
    gdt_limit: int = 0


@dataclass(frozen=True)
class Delivery:
    """What the engine must write to enter the handler."""

    rip: int
    rsp: int
    rflags: int
    cs: int
    ss: int | None  # None: unchanged
    raised: tuple[int, ...] = ()  # the exceptions raised while delivering (each one delivered in turn, #DF...)
    cr2: int | None = None  # a #PF raised while delivering: its linear address (the CPU writes CR2)


class _Fail(Exception):
    def __init__(self, vector: int, error: int, cr2: int | None = None) -> None:
        self.vector, self.error, self.cr2 = vector, error, cr2


def deliver(walker: PageWalker, cpu: CpuView, vector: int, error: int | None, return_rip: int, *,
            external: bool = False, io: PhysRead | None = None, insn_rip: int | None = None) -> Delivery:
    """Enter the handler of ``vector``; a failing delivery becomes #GP/#NP/#PF, then #DF, then TripleFault
    (SDM Table 6-5: a contributory or page fault while delivering one is a double fault). ``external``: the
    event is not the program's (an interrupt, an NMI, a CPU exception): its delivery errors set EXT. ``io``:
    what the CPU reads outside RAM (the IDT, GDT or TSS on a device page or unassigned memory: the bytes QEMU's
    memory core would give, unassigned.py); without it such a read faults. ``insn_rip``: the INT n / INT3 /
    INTO that raised ``vector`` (a fault while delivering it is reported at that instruction, SDM vol. 2A
    "INT n": the faults are raised before the instruction completes)."""
    first = vector
    ext = int(external)
    raised: list[int] = []
    cr2: int | None = None
    for _attempt in range(3):
        try:
            d = _deliver_once(walker, cpu, vector, error, return_rip, ext, io)
            return Delivery(d.rip, d.rsp, d.rflags, d.cs, d.ss, tuple(raised), cr2) if raised else d
        except _Fail as fail:
            if fail.cr2 is not None:  # SDM vol. 3A §4.7: a #PF loads CR2, a #DF it becomes too
                cr2 = fail.cr2
            if insn_rip is not None:
                return_rip, insn_rip = insn_rip, None
            if vector == DF:
                raise TripleFault(f"double fault delivery failed (first vector {first})", tuple(raised),
                                  cr2) from None
            benign_first = vector not in CONTRIBUTORY and vector != PF
            if benign_first:
                vector, error = fail.vector, fail.error
            else:
                vector, error = DF, 0
            raised.append(vector)
            ext = 1  # an exception while delivering an event: external to the program (SDM §6.13)
    raise TripleFault(f"exception delivery failed for vector {first}", tuple(raised), cr2)


def _deliver_once(walker: PageWalker, cpu: CpuView, vector: int, error: int | None, rip: int,
                  ext: int = 0, io: PhysRead | None = None) -> Delivery:
    idt_error = vector * 8 + 2 + ext  # IDT flag, EXT
    if cpu.idt_limit < vector * 16 + 15:
        raise _Fail(GP, idt_error)
    gate = _load(walker, cpu, cpu.idt_base + vector * 16, 16, io)
    lo, hi = struct.unpack("<QQ", gate)
    gate_type, present = (lo >> 40) & 0xF, (lo >> 47) & 1
    if not present or gate_type not in (0xE, 0xF):
        raise _Fail(GP, idt_error)
    target = (lo & 0xFFFF) | ((lo >> 48) & 0xFFFF) << 16 | (hi & 0xFFFF_FFFF) << 32
    selector, ist = (lo >> 16) & 0xFFFF, (lo >> 32) & 7
    cpl, new_cpl = cpu.cs & 3, selector & 3
    if cpu.gdt_base is not None:  # the handler runs at the segment's DPL (conforming: at CPL); RPL is ignored
        new_cpl = _check_code_segment(walker, cpu, selector, ext, io)
        selector = (selector & ~3) | new_cpl
    rsp, ss = cpu.rsp, None
    if ist:
        rsp = _tss_qword(walker, cpu, 0x24 + 8 * (ist - 1), io)
    elif new_cpl < cpl:
        rsp = _tss_qword(walker, cpu, 4 + 8 * new_cpl, io)
    if new_cpl < cpl:
        ss = 0
    rsp &= ~0xF
    frame = [cpu.ss, cpu.rsp, cpu.rflags, cpu.cs, rip]
    if error is not None:
        frame.append(error & 0xFFFF_FFFF)
    rsp -= 8 * len(frame)
    data = struct.pack(f"<{len(frame)}Q", *reversed(frame))
    failed = walker.store(cpu.cr3, cpu.cr0, rsp, data, user=new_cpl == 3, io=io)
    if failed is not None:  # the first push that faults, SS's first (QEMU's do_interrupt64 pushes in order)
        raise _Fail(PF, failed[0], failed[1])
    flags = cpu.rflags & ~(TF | NT | RF)
    if gate_type == 0xE:
        flags &= ~IF
    return Delivery(target, rsp, flags, selector, ss)


def _check_code_segment(walker: PageWalker, cpu: CpuView, selector: int, ext: int, io: PhysRead | None) -> int:
    """The gate's code segment (SDM vol. 2A "INT n" pseudo-code, IA-32e mode; vol. 3 §6.12.1.1): a null
    selector is #GP(EXT); one outside the GDT, an LDT selector (no LDT is modelled), a non-code segment, a DPL
    above CPL or one that is not 64-bit code is #GP(selector + EXT); a not-present segment is #NP(selector + EXT)."""
    if selector & ~3 == 0:
        raise _Fail(GP, ext)
    error = (selector & 0xFFFC) | ext
    index = selector & ~7
    if selector & 4 or cpu.gdt_base is None or index + 7 > cpu.gdt_limit:
        raise _Fail(GP, error)
    raw = _load(walker, cpu, cpu.gdt_base + index, 8, io)
    desc: int = struct.unpack("<Q", raw)[0]
    code = (desc >> 43) & 3 == 3  # S = 1 and type bit 3 (code)
    if not code or (desc >> 45) & 3 > cpu.cs & 3:
        raise _Fail(GP, error)
    if not (desc >> 47) & 1:
        raise _Fail(NP, error)
    if not (desc >> 53) & 1 or (desc >> 54) & 1:  # L = 1, D = 0
        raise _Fail(GP, error)
    return cpu.cs & 3 if (desc >> 42) & 1 else (desc >> 45) & 3  # the new CPL


def _tss_qword(walker: PageWalker, cpu: CpuView, offset: int, io: PhysRead | None) -> int:
    raw = _load(walker, cpu, cpu.tss_base + offset, 8, io)
    value: int = struct.unpack("<Q", raw)[0]
    return value


def _load(walker: PageWalker, cpu: CpuView, vaddr: int, length: int, io: PhysRead | None) -> bytes:
    """A supervisor read of a descriptor table (SDM vol. 3A §6.14: implicit supervisor accesses): a walk that
    fails is #PF with the walk's error code (RSVD for an all-ones entry) and CR2 = the address read."""
    data, err, where = walker.load(cpu.cr3, cpu.cr0, vaddr, length, io)
    if data is None:
        raise _Fail(PF, err, where)
    return data
