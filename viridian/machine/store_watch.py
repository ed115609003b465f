"""Seeing every guest store into code, at no cost to the others (docs/architecture.md, "code coherence").

Each vCPU's engine keeps its own translation cache and only notices its own stores to code, so the
machine must learn of every store into a page some vCPU executed. Measured on Unicorn 2.1.4: region
protection (``mem_protect``) splits the engine's RAM block at every protected page, and its block
lookups are linear, which doubled a Linux boot; a ``UC_HOOK_MEM_WRITE`` hook, even native, doubled it
too. But the engine already calls ``tb_invalidate_phys_page_fast`` -- through its own PLT -- for every
store into executable RAM (its dirty-page tracking is stubbed out, so no RAM page is ever clean), with
the RAM offset and length of the store. Redirecting that one PLT slot to ``vn_tbipf`` in
csrc/vcpu_native.c (which checks the machine's code map, then calls the engine's function) costs a few
nanoseconds per store.

If the slot cannot be found or does not hold what we expect (another Unicorn build), the machine falls
back to the native write hook (``vn_write``): same answers, slower.
"""

from __future__ import annotations

import ctypes
import logging
import struct
from collections.abc import Callable
from pathlib import Path

from unicorn.unicorn_py3.unicorn import uclib

log = logging.getLogger("viridian.machine.store_watch")

TARGET = b"tb_invalidate_phys_page_fast_x86_64"
ANCHOR = b"uc_version"
R_X86_64_JUMP_SLOT = 7


def _sections(data: bytes) -> dict[bytes, tuple[int, int, int, int]]:
    """name -> (offset, size, link, entsize) of each section of an ELF64 little-endian file."""
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    heads = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_off = heads[shstrndx][4]
    out = {}
    for name, _t, _f, _a, off, size, link, _i, _al, ent in heads:
        end = data.index(b"\0", names_off + name)
        out[data[names_off + name:end]] = (off, size, link, ent)
    return out


def _symbols(data: bytes, sec: dict[bytes, tuple[int, int, int, int]]) -> tuple[list[bytes], list[int]]:
    off, size, _link, ent = sec[b".dynsym"]
    str_off = sec[b".dynstr"][0]
    names, values = [], []
    for i in range(size // ent):
        name, _info, _other, _shndx, value, _size = struct.unpack_from("<IBBHQQ", data, off + i * ent)
        end = data.index(b"\0", str_off + name)
        names.append(data[str_off + name:end])
        values.append(value)
    return names, values


def _slot(path: Path) -> tuple[int, int, int] | None:
    """(GOT slot, TARGET's value, ANCHOR's value) from the engine library's ELF, relative to its load base."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    sec = _sections(data)
    if b".rela.plt" not in sec or b".dynsym" not in sec:
        return None
    names, values = _symbols(data, sec)
    off, size, _link, ent = sec[b".rela.plt"]
    for i in range(size // ent):
        r_offset, r_info, _addend = struct.unpack_from("<QQq", data, off + i * ent)
        if r_info & 0xFFFFFFFF == R_X86_64_JUMP_SLOT and names[r_info >> 32] == TARGET:
            return r_offset, values[r_info >> 32], values[names.index(ANCHOR)]
    return None


_installed: bool | None = None


def install(wrapper: int, set_real: Callable[[ctypes.c_void_p], None]) -> bool:
    """Point the engine's PLT slot for TARGET at ``wrapper`` (once per process); ``set_real`` receives the
    engine's own function first. False (with a log line) when this engine build does not allow it."""
    global _installed
    if _installed is None:
        _installed = _install(wrapper, set_real)
    return _installed


def _install(wrapper: int, set_real: Callable[[ctypes.c_void_p], None]) -> bool:
    try:
        path = Path(uclib._name)
        found = _slot(path)
        if found is None:
            log.info("store watch: no PLT slot for %s in %s; using the write hook", TARGET.decode(), path)
            return False
        slot_off, target_value, anchor_value = found
        anchor = ctypes.cast(uclib.uc_version, ctypes.c_void_p).value
        real = ctypes.cast(getattr(uclib, TARGET.decode()), ctypes.c_void_p).value
        if anchor is None or real is None or real != anchor - anchor_value + target_value:
            log.info("store watch: %s is not where the ELF says; using the write hook", TARGET.decode())
            return False
        base = anchor - anchor_value
        page = (base + slot_off) & ~0xFFF
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.mprotect(ctypes.c_void_p(page), ctypes.c_size_t(0x1000), 3) != 0:  # PROT_READ | PROT_WRITE
            log.info("store watch: cannot make the PLT slot writable; using the write hook")
            return False
        set_real(ctypes.c_void_p(real))
        ctypes.c_uint64.from_address(base + slot_off).value = wrapper
        return True
    except (OSError, ValueError, KeyError, AttributeError, IndexError, struct.error) as exc:
        log.info("store watch unavailable (%s); using the write hook", exc)
        return False
