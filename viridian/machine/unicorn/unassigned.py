"""Guest-physical addresses with nothing behind them (beyond RAM, outside the APIC and the devices).

A guest reaches them through its own page tables (a mapping past RAM, CR3 or the GDTR pointed there, a page
walk or a descriptor load): reads return all-ones and writes are dropped, as on QEMU's PC machine, where the
PCI address space's master-abort region answers every access no device claims ("returns -1 on read, does
nothing on write", hw/pci master abort; KVM hands such accesses to QEMU). The engine reports an access to
unmapped physical memory through UC_HOOK_MEM_*_UNMAPPED with the physical address; the vCPU then maps the
largest aligned free block around it (1 GiB, 2 MiB or 4 KiB, so a sweep does not fragment the engine's region
list) as an I/O region with those answers, and the access completes. Instruction fetches from such memory
stay an engine error (QEMU cannot execute there either).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from unicorn import UC_HOOK_MEM_READ_UNMAPPED, UC_HOOK_MEM_WRITE_UNMAPPED

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


def install(v: Vcpu) -> None:
    """The vCPU answers accesses to unassigned guest-physical memory (see the module docstring)."""
    mapped: list[tuple[int, int]] = []

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
