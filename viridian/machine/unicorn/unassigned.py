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

What the machine itself reads outside RAM -- the IDT, GDT or TSS during delivery (delivery.py), a descriptor
for a segment load the engine stopped on (arch_faults.py) -- comes from :func:`read_physical`: the bytes the
engine's memory core answers there (a device's MMIO callback, e.g. the local APIC's register read, which is
QEMU's behaviour for a descriptor table on the APIC page; all-ones where nothing is mapped).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

from unicorn import (
    UC_ERR_FETCH_PROT,
    UC_ERR_FETCH_UNMAPPED,
    UC_HOOK_MEM_READ_UNMAPPED,
    UC_HOOK_MEM_WRITE_UNMAPPED,
    UcError,
)
from unicorn import x86_const as X

from viridian.machine.paging import PhysRead

if TYPE_CHECKING:
    from viridian.machine.unicorn.vcpu import Vcpu

PHYS_BITS = 40  # the engine's CPU model: MAXPHYADDR (CPUID.80000008H:EAX[7:0] on its qemu64 model)
ALL_ONES = (1 << 64) - 1
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
    if pa is None or pa < v.m.ram_size:
        return False
    v.stats.events["fetch from unassigned memory" if unassigned(v, pa) else "fetch from a device page"] += 1
    v.raise_exception(6, None, rip, count_exit=True)  # deferred: the run loop enters the handler
    return True
