"""x86-64 4-level page walk (engine-free), for exception frames, IDT reads and site discovery.

Paging-structure entries outside RAM are read through ``io`` when the caller gives one: what the engine's own
walker reads there (all-ones on unassigned memory, a device's register answer on its page; unassigned.py).
Without ``io`` such an entry reads as not present. An entry with a reserved bit set (SDM vol. 3A §4.5.4:
bits 51:MAXPHYADDR, PML4E.PS, a large page's low address bits) stops the walk: #PF with RSVD = 1 and P = 1."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final

MASK52: Final = 0x000F_FFFF_FFFF_F000
_P, _RW, _US, _PS = 1, 2, 4, 0x80
PF_P, PF_W, PF_U, PF_RSVD = 1, 2, 4, 8  # #PF error code bits (SDM vol. 3A §4.7)
CR0_WP: Final = 1 << 16
PHYS_BITS: Final = 40  # MAXPHYADDR of both engines' CPU model (Unicorn's qemu64: CPUID.80000008H:EAX[7:0])
PhysRead = Callable[[int, int], bytes]  # (guest-physical address, length) -> the bytes the CPU reads there


class PageWalker:
    """Translate guest-virtual to guest-physical addresses with the vCPU's CR3 (long mode, PAE paging)."""

    def __init__(self, ram: memoryview, ram_size: int, phys_bits: int = PHYS_BITS) -> None:
        self.ram, self.ram_size = ram, ram_size
        self._reserved = MASK52 & ~((1 << phys_bits) - 1)  # bits 51:MAXPHYADDR

    def _entry(self, addr: int, io: PhysRead | None = None) -> int | None:
        if addr + 8 > self.ram_size:
            if io is None:
                return None
            return int.from_bytes(io(addr, 8), "little")
        value: int = struct.unpack_from("<Q", self.ram, addr)[0]
        return value

    def walk(self, cr3: int, cr0: int, vaddr: int, write: bool = False, user: bool = False,
             io: PhysRead | None = None) -> tuple[int | None, int]:
        """(physical address or None, the #PF error code when None). ``write``/``user``: the access's kind;
        a supervisor write honours R/W only with CR0.WP (SDM vol. 3A §4.6.1)."""
        if not cr0 & 0x8000_0000:
            return vaddr & 0xFFFF_FFFF, 0
        kind = (PF_W if write else 0) | (PF_U if user else 0)
        table = cr3 & MASK52
        writable = usable = True
        for level, shift in enumerate((39, 30, 21, 12)):
            e = self._entry(table + ((vaddr >> shift) & 0x1FF) * 8, io)
            if e is None or not e & _P:
                return None, kind
            large = level in (1, 2) and bool(e & _PS)
            low = ((1 << shift) - 1) & ~0x1FFF if large else 0  # a large page's bits (shift-1):13 (PAT at 12)
            if e & self._reserved or (level == 0 and e & _PS) or e & low:
                return None, kind | PF_P | PF_RSVD
            writable, usable = writable and bool(e & _RW), usable and bool(e & _US)
            if large:
                size = 1 << shift
                pa = (e & MASK52 & ~(size - 1)) | (vaddr & (size - 1))
                break
            table = e & MASK52
        else:
            pa = table | (vaddr & 0xFFF)
        if (user and not usable) or (write and not writable and (user or cr0 & CR0_WP)):
            return None, kind | PF_P
        return pa, 0

    def translate(self, cr3: int, cr0: int, vaddr: int, write: bool = False,
                  io: PhysRead | None = None) -> int | None:
        """Physical address, or None when not present (or not writable for ``write``)."""
        return self.walk(cr3, cr0, vaddr, write, io=io)[0]

    def load(self, cr3: int, cr0: int, vaddr: int, length: int,
             io: PhysRead | None = None) -> tuple[bytes | None, int, int]:
        """(bytes, 0, 0), or (None, #PF error code, the faulting linear address): a supervisor read, page by
        page; outside RAM through ``io`` (device registers, unassigned memory), else not readable."""
        out = bytearray()
        while length > 0:
            chunk = min(length, 0x1000 - (vaddr & 0xFFF))
            pa, err = self.walk(cr3, cr0, vaddr, io=io)
            if pa is None:
                return None, err, vaddr
            if pa + chunk > self.ram_size:
                if io is None:
                    return None, 0, vaddr
                out += io(pa, chunk)
            else:
                out += self.ram[pa : pa + chunk]
            vaddr, length = vaddr + chunk, length - chunk
        return bytes(out), 0, 0

    def read(self, cr3: int, cr0: int, vaddr: int, length: int, io: PhysRead | None = None) -> bytes | None:
        """Bytes at a virtual address, page by page; None if any page is not mapped, or not RAM without
        ``io`` (which answers guest-physical reads outside RAM -- device registers, unassigned memory -- for
        the paging-structure entries too)."""
        return self.load(cr3, cr0, vaddr, length, io)[0]

    def store(self, cr3: int, cr0: int, vaddr: int, data: bytes, user: bool = False,
              io: PhysRead | None = None) -> tuple[int, int] | None:
        """Write ``data`` as pushes do, highest qword first (SDM vol. 3A §6.14.2: the frame's pushes): None, or
        (#PF error code, the faulting linear address) with nothing written. With ``io`` a page outside RAM
        takes the write and drops it (unassigned memory; a device page too: not its registers); without it
        such a page fails as not writable."""
        pages: list[tuple[int, int, int]] = []  # (pa, offset in data, length), checked before any byte is written
        end = vaddr + len(data)
        while end > vaddr:
            start = max(vaddr, (end - 1) & ~0xFFF)
            pa, err = self.walk(cr3, cr0, start, write=True, user=user, io=io)
            if pa is None or (io is None and pa + (end - start) > self.ram_size):
                return (err if pa is None else PF_P | PF_W, (end - 8) if end - 8 >= start else start)
            pages.append((pa, start - vaddr, end - start))
            end = start
        for pa, off, n in pages:
            if pa + n <= self.ram_size:
                self.ram[pa : pa + n] = data[off : off + n]
        return None

    def write(self, cr3: int, cr0: int, vaddr: int, data: bytes) -> bool:
        """Write ``data`` to RAM through the page tables (False, nothing written: a page not writable or not RAM)."""
        return self.store(cr3, cr0, vaddr, data) is None
