"""Register access for the reference engine through Unicorn's public C API (uc_reg_read_batch /
uc_reg_write_batch, uc_context_reg_read / uc_context_reg_write): a fixed set of registers read or written
in one call, on the engine instance or on a parked vCPU's saved context."""

from __future__ import annotations

import ctypes
from typing import Any

from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

MASK64 = (1 << 64) - 1
NAMES: dict[str, int] = {
    **{n: getattr(X, f"UC_X86_REG_{n.upper()}") for n in (
        "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14",
        "r15", "rip", "rflags", "cs", "ss", "ds", "es", "fs", "gs", "cr0", "cr2", "cr3", "cr4", "cr8")},
}


class RegSet:
    """Registers ``ids`` read/written in one public batch call; 16 bytes per slot (XMM fits)."""

    def __init__(self, ids: tuple[int, ...]) -> None:
        self.n = len(ids)
        self._ids = (ctypes.c_int * self.n)(*ids)
        self._buf = (ctypes.c_uint64 * (2 * self.n))()
        base = ctypes.addressof(self._buf)
        self._ptrs = (ctypes.c_void_p * self.n)(*[base + 16 * i for i in range(self.n)])

    def read(self, handle: Any, ctx: Any = None) -> list[int]:
        """Low 64 bits of each register: of the engine (``handle``) or of a saved context (``ctx``)."""
        if ctx is None:
            uclib.uc_reg_read_batch(handle, self._ids, self._ptrs, self.n)
        else:
            uclib.uc_context_reg_read_batch(ctx, self._ids, self._ptrs, self.n)
        return self._buf[0 : 2 * self.n : 2]

    def wide(self, first: int, count: int) -> list[int]:
        """128-bit values of slots ``first..first+count-1`` from the last read."""
        b = self._buf
        return [b[2 * i] | b[2 * i + 1] << 64 for i in range(first, first + count)]

    def write(self, handle: Any, values: list[int] | tuple[int, ...], ctx: Any = None) -> None:
        buf = self._buf
        for i, v in enumerate(values):
            buf[2 * i] = v & MASK64
            buf[2 * i + 1] = (v >> 64) & MASK64
        if ctx is None:
            uclib.uc_reg_write_batch(handle, self._ids, self._ptrs, len(values))
        else:
            uclib.uc_context_reg_write_batch(ctx, self._ids, self._ptrs, len(values))


def ids(*names: str) -> tuple[int, ...]:
    return tuple(NAMES[n] for n in names)
