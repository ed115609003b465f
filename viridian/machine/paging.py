"""x86-64 4-level page walk over guest RAM (engine-free), for exception frames, IDT reads and site discovery."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final

MASK52: Final = 0x000F_FFFF_FFFF_F000
_P, _RW, _US, _PS = 1, 2, 4, 0x80
PhysRead = Callable[[int, int], bytes]  # (guest-physical address, length) -> the bytes the CPU reads there


class PageWalker:
    """Translate guest-virtual to guest-physical addresses with the vCPU's CR3 (long mode, PAE paging)."""

    def __init__(self, ram: memoryview, ram_size: int) -> None:
        self.ram, self.ram_size = ram, ram_size

    def _entry(self, addr: int) -> int | None:
        if addr + 8 > self.ram_size:
            return None
        value: int = struct.unpack_from("<Q", self.ram, addr)[0]
        return value

    def translate(self, cr3: int, cr0: int, vaddr: int, write: bool = False) -> int | None:
        """Physical address, or None when not present (or not writable for ``write``)."""
        if not cr0 & 0x8000_0000:
            return vaddr & 0xFFFF_FFFF
        table = cr3 & MASK52
        for level, shift in enumerate((39, 30, 21, 12)):
            e = self._entry(table + ((vaddr >> shift) & 0x1FF) * 8)
            if e is None or not e & _P or (write and not e & _RW):
                return None
            if level in (1, 2) and e & _PS:
                size = 1 << shift
                return (e & MASK52 & ~(size - 1)) | (vaddr & (size - 1))
            table = e & MASK52
        return table | (vaddr & 0xFFF)

    def read(self, cr3: int, cr0: int, vaddr: int, length: int, io: PhysRead | None = None) -> bytes | None:
        """Bytes at a virtual address, page by page; None if any page is not mapped, or not RAM without
        ``io`` (which answers guest-physical reads outside RAM: device registers, unassigned memory)."""
        out = bytearray()
        while length > 0:
            chunk = min(length, 0x1000 - (vaddr & 0xFFF))
            pa = self.translate(cr3, cr0, vaddr)
            if pa is None:
                return None
            if pa + chunk > self.ram_size:
                if io is None:
                    return None
                out += io(pa, chunk)
            else:
                out += self.ram[pa : pa + chunk]
            vaddr, length = vaddr + chunk, length - chunk
        return bytes(out)

    def write(self, cr3: int, cr0: int, vaddr: int, data: bytes) -> bool:
        pos = 0
        while pos < len(data):
            chunk = min(len(data) - pos, 0x1000 - (vaddr & 0xFFF))
            pa = self.translate(cr3, cr0, vaddr, write=True)
            if pa is None or pa + chunk > self.ram_size:
                return False
            self.ram[pa : pa + chunk] = data[pos : pos + chunk]
            vaddr, pos = vaddr + chunk, pos + chunk
        return True
