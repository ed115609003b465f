"""Guest-physical memory as the model sees it: a narrow interface the machine implements."""

from __future__ import annotations

from typing import Protocol


class GuestMemoryError(Exception):
    """An access outside guest RAM (or to a page the model may not touch)."""


class GuestMemory(Protocol):
    """Guest RAM at GPA 0..size. Accesses outside raise GuestMemoryError (never IndexError)."""

    @property
    def size(self) -> int: ...

    def read(self, gpa: int, length: int) -> bytes: ...

    def write(self, gpa: int, data: bytes) -> None: ...


class BytesMemory:
    """GuestMemory over a bytearray: used by tests, and by the machine over its shared RAM buffer."""

    def __init__(self, size_or_buffer: int | bytearray | memoryview) -> None:
        if isinstance(size_or_buffer, int):
            self._buf: bytearray | memoryview = bytearray(size_or_buffer)
        else:
            self._buf = size_or_buffer
        self._size = len(self._buf)

    @property
    def size(self) -> int:
        return self._size

    @property
    def buffer(self) -> bytearray | memoryview:
        return self._buf

    def contains(self, gpa: int, length: int) -> bool:
        return gpa >= 0 and length >= 0 and gpa + length <= self._size

    def read(self, gpa: int, length: int) -> bytes:
        if not self.contains(gpa, length):
            raise GuestMemoryError(f"read of {length} bytes at GPA {gpa:#x} is outside RAM ({self._size:#x})")
        return bytes(self._buf[gpa : gpa + length])

    def write(self, gpa: int, data: bytes) -> None:
        if not self.contains(gpa, len(data)):
            raise GuestMemoryError(f"write of {len(data)} bytes at GPA {gpa:#x} is outside RAM ({self._size:#x})")
        self._buf[gpa : gpa + len(data)] = data

    def read_u32(self, gpa: int) -> int:
        return int.from_bytes(self.read(gpa, 4), "little")

    def read_u64(self, gpa: int) -> int:
        return int.from_bytes(self.read(gpa, 8), "little")

    def write_u32(self, gpa: int, value: int) -> None:
        self.write(gpa, (value & 0xFFFFFFFF).to_bytes(4, "little"))

    def write_u64(self, gpa: int, value: int) -> None:
        self.write(gpa, (value & (1 << 64) - 1).to_bytes(8, "little"))
