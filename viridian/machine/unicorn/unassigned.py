"""Guest-physical addresses with nothing behind them (beyond RAM, outside the APIC and the devices).

A guest reaches them through its own page tables (a mapping past RAM, CR3 or the GDTR pointed there, a page
walk or a descriptor load): reads return all-ones and writes are dropped, as on QEMU's PC machine, where the
PCI address space's master-abort region answers every access no device claims ("returns -1 on read, does
nothing on write", hw/pci master abort; KVM hands such accesses to QEMU). The engine reports an access to
unmapped physical memory through UC_HOOK_MEM_*_UNMAPPED with the physical address; the vCPU then maps the
largest aligned free block around it (1 GiB, 2 MiB or 4 KiB, so a sweep does not fragment the engine's region
list) as an I/O region with those answers, and the access completes.

An instruction fetch there reads all-ones too. QEMU's TCG executes from an I/O region through its read
callback (older versions stopped with "Trying to execute code outside RAM or ROM"), so the bytes are FF FF...:
opcode FF with ModRM FF is group 5 /7, an undefined encoding (SDM vol. 2 Table A-6) -> #UD at the fetch
address, delivered through the guest's IDT. The engine cannot fetch from an I/O region (it stops with
UC_ERR_FETCH_UNMAPPED / _PROT); :func:`fetch_fault` turns that stop into the #UD.

An instruction that starts in RAM and runs into unassigned memory (RAM's last bytes, or a page the guest
maps before an unassigned one) is decoded from the RAM bytes followed by FF FF..., as QEMU's decoder would:
FF-filled operands (B0 at RAM's last byte is MOV AL, 0xFF), or an undefined encoding (FF at the last byte:
FF /7 -> #UD at it). The engine cannot translate a block that touches the unassigned page at all
(UC_ERR_FETCH_UNMAPPED at the block's start), so :func:`fetch_fault` runs the block up to that instruction
(``until``), then :func:`edge_stop` runs that one instruction with an all-ones RAM page standing in for the
unassigned page (its writes are dropped with it; :func:`after_run` restores the block). One that runs into a
device page is #UD at its address (this machine does not execute device registers, as below).

What the machine itself reads outside RAM -- the IDT, GDT or TSS during delivery (delivery.py), a descriptor
for a segment load the engine stopped on (arch_faults.py) -- comes from :func:`read_physical`: the bytes the
engine's memory core answers there (a device's MMIO callback, e.g. the local APIC's register read, which is
QEMU's behaviour for a descriptor table on the APIC page; all-ones where nothing is mapped).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

from unicorn import (
    UC_ERR_FETCH_PROT,
    UC_ERR_FETCH_UNMAPPED,
    UC_HOOK_MEM_READ_UNMAPPED,
    UC_HOOK_MEM_WRITE_UNMAPPED,
    UC_PROT_ALL,
    UcError,
)
from unicorn import x86_const as X

from viridian.machine.paging import PhysRead

if TYPE_CHECKING:
    from viridian.machine.unicorn.vcpu import Vcpu

PHYS_BITS = 40  # the engine's CPU model: MAXPHYADDR (CPUID.80000008H:EAX[7:0] on its qemu64 model)
ALL_ONES = (1 << 64) - 1
X_MAX = (1 << 64) - 1  # engine.MAX_ADDR: a run's ``until`` when nothing stops it earlier
_BLOCKS = (1 << 30, 1 << 21, 1 << 12)
MAX_REGIONS = 256  # blocks one vCPU maps at most (then an access ends the run as an engine error)


def _read(_uc: Any, _offset: int, size: int, _ud: Any) -> int:
    return ALL_ONES & ((1 << (8 * size)) - 1)


def _write(_uc: Any, _offset: int, _size: int, _value: int, _ud: Any) -> None:
    return None


def free_block(regions: list[tuple[int, int]], address: int) -> tuple[int, int] | None:
    """(base, size) of the largest aligned block around ``address`` overlapping no region (inclusive ends)."""
    for size in _BLOCKS:
        base = address & ~(size - 1)
        if base + size > 1 << PHYS_BITS:
            continue
        if all(end < base or begin >= base + size for begin, end in regions):
            return base, size
    return None


_BLOCKS_MAPPED: WeakKeyDictionary[Vcpu, list[tuple[int, int]]] = WeakKeyDictionary()  # the all-ones blocks


def install(v: Vcpu) -> None:
    """The vCPU answers accesses to unassigned guest-physical memory (see the module docstring)."""
    mapped: list[tuple[int, int]] = []
    _BLOCKS_MAPPED[v] = mapped  # (base, size) of each block the vCPU's engine mapped

    def unmapped(uc: Any, _access: int, address: int, _size: int, _value: int, _ud: Any) -> bool:
        if address >= 1 << PHYS_BITS or len(mapped) >= MAX_REGIONS:
            return False
        block = free_block([(b, e) for b, e, _p in uc.mem_regions()], address)
        if block is None:
            return False
        uc.mmio_map(block[0], block[1], _read, None, _write, None)
        mapped.append(block)
        v.stats.events["unassigned memory mapped"] += 1
        return True

    v.uc.hook_add(UC_HOOK_MEM_READ_UNMAPPED | UC_HOOK_MEM_WRITE_UNMAPPED, v.guard(unmapped, False))


def read_physical(v: Vcpu, pa: int, length: int) -> bytes:
    """The bytes vCPU ``v`` reads at guest-physical ``pa`` (a device region through its MMIO callback, which the
    engine splits into the accesses it would make; unassigned memory all-ones, as the engine's own accesses)."""
    out = bytearray()
    while length > 0:
        chunk = min(length, 0x1000 - (pa & 0xFFF))
        if pa + chunk <= v.m.ram_size:
            out += v.m.walker.ram[pa : pa + chunk]
        else:
            try:
                out += v.uc.mem_read(pa, chunk)
            except UcError:  # nothing mapped there (yet): what unassigned memory answers
                out += b"\xff" * chunk
        pa, length = pa + chunk, length - chunk
    return bytes(out)


def reader(v: Vcpu) -> PhysRead:
    """:func:`read_physical` for vCPU ``v``, as the page walker's ``io``."""
    return lambda pa, length: read_physical(v, pa, length)


def read_linear(v: Vcpu, vaddr: int, length: int) -> bytes | None:
    """Bytes at a linear address through the guest's page tables, outside RAM too (None: not mapped)."""
    cr3, cr0 = v.paging()
    return v.m.walker.read(cr3, cr0, vaddr, length, reader(v))


def unassigned(v: Vcpu, pa: int) -> bool:
    """Nothing but the all-ones answer is at guest-physical ``pa`` (not RAM, no device region)."""
    if pa < v.m.ram_size:
        return False
    if any(base <= pa < base + size for base, size in _BLOCKS_MAPPED.get(v, ())):
        return True
    return not any(begin <= pa <= end for begin, end, _p in v.uc.mem_regions())


def fetch_fault(v: Vcpu, exc: UcError) -> bool:
    """The engine stopped on an instruction fetch at RIP outside RAM: #UD there, delivered by the run loop.
    From unassigned memory that is QEMU's answer (module docstring). From a device page (the local APIC, the
    PC's I/O APIC or HPET) QEMU would decode whatever the device's MMIO reads return; this machine does not
    execute device registers and answers as for unassigned memory (a deterministic #UD at the fetch address,
    README "Guest contract"). False: another engine error."""
    if exc.errno not in (UC_ERR_FETCH_UNMAPPED, UC_ERR_FETCH_PROT):
        return False
    rip = int(v.uc.reg_read(X.UC_X86_REG_RIP))
    cr3, cr0 = v.paging()
    pa = v.m.walker.translate(cr3, cr0, rip)
    if pa is None:
        return False
    if pa < v.m.ram_size:
        return edge_stop(v, rip, deferred=True)
    v.stats.events["fetch from unassigned memory" if unassigned(v, pa) else "fetch from a device page"] += 1
    v.raise_exception(6, None, rip, count_exit=True)  # deferred: the run loop enters the handler
    return True


@dataclass
class _Edge:
    """One vCPU's instruction at the edge of RAM: where the next run ends, the all-ones page standing in."""

    until: int | None = None  # the next run stops here (the instruction that runs into unassigned memory)
    page: int | None = None  # guest-physical page mapped all-ones RAM for one run
    stand_in: int | None = None  # ... to be mapped right before the next run (by :func:`until`)
    buffer: Any = None
    restore: bool = False  # the page was part of an all-ones I/O block: map it back as one after the run
    done_at: int | None = None  # the stood-in instruction ends here: the engine's stop there is expected
    tried: tuple[int, int] | None = None  # (RIP, clock) last handled: the same again is not this case


_EDGE: WeakKeyDictionary[Vcpu, _Edge] = WeakKeyDictionary()
_ARMED: set[int] = set()  # id() of the vCPUs whose next run ends early or has a stand-in page (the hot path's test)
_ONES = b"\xff" * 0x1000


def _straddler(v: Vcpu, rip: int) -> tuple[int, int, int] | None:
    """(address, length or 0 for undefined, guest-physical page beyond RAM) of the first instruction from
    ``rip`` that runs off its RAM page into unassigned memory or a device page (length -1: a device page)."""
    from capstone import CS_ARCH_X86, CS_MODE_64, Cs

    end = (rip | 0xFFF) + 1
    cr3, cr0 = v.paging()
    pa2 = v.m.walker.translate(cr3, cr0, end)
    if pa2 is None or pa2 < v.m.ram_size:
        return None  # not mapped (the engine's #PF) or RAM: not this case
    first = v.read_virtual(rip, end - rip)
    if first is None:
        return None
    tail = _ONES[:15] if unassigned(v, pa2) else b"\x90" * 15  # a device's: not decoded (#UD anyway)
    at = rip
    for insn in Cs(CS_ARCH_X86, CS_MODE_64).disasm(first + tail, rip):
        at = insn.address
        if at + insn.size > end:
            return at, (insn.size if tail[0] == 0xFF else -1), pa2 & ~0xFFF
        at += insn.size
        if at >= end:
            return None  # ends at the page boundary: the engine fetches the next page itself
    return (at, 0 if tail[0] == 0xFF else -1, pa2 & ~0xFFF) if at < end else None


def until(v: Vcpu) -> int:
    """Where the next engine run ends: the address after which nothing may be translated, or MAX_ADDR."""
    if id(v) not in _ARMED:
        return X_MAX
    edge = _EDGE.get(v)
    if edge is None or edge.until is None:
        return X_MAX
    end, edge.until = edge.until, None
    if edge.stand_in is not None:  # mapped here, not when found: an engine error is found before after_run
        page, edge.stand_in = edge.stand_in, None
        edge.restore = not all(e < page or b >= page + 0x1000 for b, e, _p in v.uc.mem_regions())
        if edge.restore:
            v.uc.mem_unmap(page, 0x1000)  # splits the all-ones I/O block (Unicorn 2.1 splits MMIO regions)
        edge.buffer = (ctypes.c_ubyte * 0x1000).from_buffer_copy(_ONES)
        v.uc.mem_map_ptr(page, 0x1000, UC_PROT_ALL, ctypes.addressof(edge.buffer))
        edge.page = page
    return end


def _first_try(v: Vcpu, edge: _Edge, rip: int) -> bool:
    """Not handled at this (RIP, clock) yet: a second engine stop with no progress is not this case."""
    here = (rip, int(v.native.bytes))
    if edge.tried == here:
        return False
    edge.tried = here
    return True


def edge_stop(v: Vcpu, rip: int, deferred: bool = False) -> bool:
    """The engine stopped at ``rip`` in RAM (a fetch error there, a stop with nothing to report, or
    :func:`until`): if an instruction from ``rip`` on runs from its RAM page into unassigned memory, run up to
    it (the engine cannot translate the block), then execute it with the all-ones bytes (module docstring);
    one that is undefined there or runs into a device page is #UD at its address. False: not this case.
    ``deferred``: called before the run loop settled the clock (an engine error): the loop enters the handler."""
    edge = _EDGE.get(v)
    if edge is not None and edge.done_at is not None:
        done, edge.done_at = edge.done_at == rip, None
        if done:
            return True  # the stood-in instruction completed; the next run goes on from here
    found = _straddler(v, rip)
    if found is None:
        return False
    at, length, page = found
    edge = _EDGE.setdefault(v, _Edge())
    if at != rip:
        if not _first_try(v, edge, rip):
            return False  # the run up to it stopped the same way: not this case after all
        edge.until = at
        _ARMED.add(id(v))
        v.stats.events["run up to an instruction at the edge of RAM"] += 1
        if deferred:
            v.stop()  # the run loop goes on with the next run (not the natural-stop path)
        return True
    if length <= 0:
        v.stats.events["fetch from unassigned memory" if length == 0 else "fetch from a device page"] += 1
        v.raise_exception(6, None, at, count_exit=True, deferred=deferred)
        return True
    if not _first_try(v, edge, rip):
        return False
    edge.stand_in, edge.until, edge.done_at = page, at + length, at + length
    _ARMED.add(id(v))
    v.stats.events["instruction at the edge of RAM"] += 1
    if deferred:
        v.stop()
    return True


def after_run(v: Vcpu) -> None:
    """After an engine run: the all-ones page that stood in for one instruction goes (its writes with it)."""
    if id(v) not in _ARMED:
        return
    edge = _EDGE.get(v)
    if edge is None or edge.page is None:
        if edge is None or edge.until is None:
            _ARMED.discard(id(v))
        return
    _ARMED.discard(id(v))
    page, edge.page = edge.page, None
    v.uc.mem_unmap(page, 0x1000)
    if edge.restore:
        v.uc.mmio_map(page, 0x1000, _read, None, _write, None)
    edge.buffer = None
