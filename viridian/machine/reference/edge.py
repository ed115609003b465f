"""An instruction that starts in RAM and runs into unassigned memory (RAM's last bytes, or a RAM page the guest
maps in front of an unassigned one), on the reference engine. The answer is the fast engine's (unicorn/
unassigned.py, QEMU's): the decoder sees the RAM bytes, then all-ones (PCI master abort) -- FF at the last byte
is FF /7, undefined -> #UD there; B0 is MOV AL, 0xFF; 48 B8 is MOV RAX, all-ones; into a device page: #UD at
the instruction (device registers are not executed).

Unicorn cannot translate a block that touches the unassigned page (UC_ERR_FETCH_UNMAPPED at the block's
start), so the run loop runs up to that instruction (emu_start's ``until``), then runs it alone with an
all-ones RAM page standing in for the unassigned page (mapped right before that run and removed right after:
a write it makes there is dropped with it; an all-ones I/O block is split with mem_unmap and mapped back).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import capstone
from unicorn import UC_PROT_ALL

from viridian.machine.reference.engine import MAX_ADDR

if TYPE_CHECKING:
    from viridian.machine.reference.vcpu import Vcpu

_ONES = b"\xff" * 0x1000


@dataclass
class Edge:
    """One vCPU's instruction at the edge of RAM."""

    until: int | None = None  # the next run ends here
    stand_in: int | None = None  # guest-physical page to map all-ones RAM for the next run
    page: int | None = None  # ... mapped now
    restore: bool = False  # it was part of an all-ones I/O block: map it back as one
    buffer: Any = None
    done_at: int | None = None  # the stood-in instruction ends here: the stop there is expected
    tried: tuple[int, int] | None = None  # (RIP, clock) handled last: the same again is not this case


def _unassigned(v: Vcpu, pa: int) -> bool:
    from viridian.machine.reference.arch import _device

    return pa >= v.m.ram_size and not _device(v, pa)


def straddler(v: Vcpu, rip: int) -> tuple[int, int, int] | None:
    """(address, length -- 0: undefined, -1: into a device page --, guest-physical page beyond RAM) of the first
    instruction from ``rip`` that runs off its RAM page into memory outside RAM."""
    end = (rip | 0xFFF) + 1
    cr3, cr0 = v.paging()
    pa2 = v.m.walker.translate(cr3, cr0, end)
    if pa2 is None or pa2 < v.m.ram_size:
        return None
    first = v.read_virtual(rip, end - rip)
    if first is None:
        return None
    ones = _unassigned(v, pa2)
    tail = _ONES[:15] if ones else b"\x90" * 15
    at = rip
    for insn in capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64).disasm(first + tail, rip):
        at = insn.address
        if at + insn.size > end:
            return at, (insn.size if ones else -1), pa2 & ~0xFFF
        at += insn.size
        if at >= end:
            return None
    return (at, 0 if ones else -1, pa2 & ~0xFFF) if at < end else None


def stop(v: Vcpu, rip: int) -> bool:
    """The engine stopped at ``rip`` (a fetch error or a stop at the run's ``until``): run up to / run the
    instruction at the edge of RAM, or raise its #UD. False: not this case."""
    from viridian.machine.reference import events as EV

    edge = v.edge
    if edge.done_at is not None:
        done, edge.done_at = edge.done_at == rip, None
        if done:
            return True  # the stood-in instruction completed
    cr3, cr0 = v.paging()
    pa = v.m.walker.translate(cr3, cr0, rip)
    if pa is None or pa >= v.m.ram_size:
        return False
    found = straddler(v, rip)
    if found is None:
        return False
    at, length, page = found
    if length <= 0 and at == rip:
        v.stats.events["fetch from unassigned memory" if length == 0 else "fetch from a device page"] += 1
        v.settle(rip)
        EV.raise_exception(v, 6, None, at, count_exit=True, deferred=False)
        return True
    here = (rip, v.bytes)
    if edge.tried == here:
        return False  # the same stop again, no progress: not this case after all
    edge.tried = here
    if at != rip:
        edge.until = at
        v.stats.events["run up to an instruction at the edge of RAM"] += 1
    else:
        edge.stand_in, edge.until, edge.done_at = page, at + length, at + length
        v.stats.events["instruction at the edge of RAM"] += 1
    return True


def until(v: Vcpu) -> int:
    """Where the next engine run ends (MAX_ADDR: nowhere in particular); maps a stand-in page it needs."""
    edge = v.edge
    if edge.until is None:
        return MAX_ADDR
    end, edge.until = edge.until, None
    if edge.stand_in is not None:
        page, edge.stand_in = edge.stand_in, None
        uc = v.eng.uc
        edge.restore = not all(e < page or b >= page + 0x1000 for b, e, _p in uc.mem_regions())
        if edge.restore:
            uc.mem_unmap(page, 0x1000)  # splits the all-ones I/O block
        edge.buffer = (ctypes.c_ubyte * 0x1000).from_buffer_copy(_ONES)
        uc.mem_map_ptr(page, 0x1000, UC_PROT_ALL, ctypes.addressof(edge.buffer))
        edge.page = page
    return end


def after_run(v: Vcpu) -> None:
    """After an engine run: the stand-in page goes (its writes with it); an all-ones block is whole again."""
    from viridian.machine.reference.engine import _all_ones, _drop

    edge = v.edge
    if edge.page is None:
        return
    page, edge.page = edge.page, None
    uc = v.eng.uc
    uc.mem_unmap(page, 0x1000)
    if edge.restore:
        uc.mmio_map(page, 0x1000, _all_ones, None, _drop, None)
    edge.buffer = None
    v.eng.flush_tlb()
