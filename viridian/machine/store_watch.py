"""Seeing every guest store into code, at no cost to the others (docs/architecture.md, "code coherence").

Each vCPU's engine keeps its own translation cache and only notices its own stores to code, so the
machine must learn of every store into a page some vCPU executed. Measured on Unicorn 2.1.4: region
protection (``mem_protect``) splits the engine's RAM block at every protected page, and its block
lookups are linear, which doubled a Linux boot; a ``UC_HOOK_MEM_WRITE`` hook, even native, doubled it
too. But the engine already calls ``tb_invalidate_phys_page_fast`` -- through its own PLT -- for every
store into a RAM page it considers clean, with the RAM offset and length of the store; its dirty-page
tracking is stubbed out, so that is every store into writable RAM, each through the slow store helper.

So three PLT slots of the engine library lead into csrc/engine_watch.c instead:
- ``tb_invalidate_phys_page_fast`` -> ``vn_tbipf``: checks the machine's code map, then calls the engine's;
- ``tlb_set_page_with_attrs`` -> ``vn_tlb_set_page``: a TLB fill for writable RAM that no engine ever
  translated code from loses the clean-page flag (the engine's ``tlb_set_dirty``), so stores there run
  inline -- a Linux boot spent ~40 % of its time in the slow store helper;
- ``tlb_protect_code`` -> ``vn_protect_code``: when an engine links its first translation into a page, every
  vCPU's TLB entries for it get the flag back (``tlb_reset_dirty``), so from then on its stores are seen.

If a slot cannot be found or does not hold what we expect (another Unicorn build), none is redirected and
the machine falls back to the native write hook (``vn_write``): same answers, slower.
"""

from __future__ import annotations

import ctypes
import logging
import struct
from pathlib import Path
from typing import Any

from unicorn.unicorn_py3.unicorn import uclib

log = logging.getLogger("viridian.machine.store_watch")

TBIPF, TLB_SET_PAGE, PROTECT_CODE = (b"tb_invalidate_phys_page_fast_x86_64", b"tlb_set_page_with_attrs_x86_64",
                                     b"tlb_protect_code_x86_64")
TARGETS = (TBIPF, TLB_SET_PAGE, PROTECT_CODE)
HELPERS = ("tlb_set_dirty_x86_64", "tlb_reset_dirty_x86_64")  # called by engine_watch.c, not redirected
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


def _slots(path: Path) -> tuple[dict[bytes, tuple[int, int]], int] | None:
    """({target: (GOT slot, target's value)}, ANCHOR's value) from the engine library's ELF, relative to its
    load base; None unless every target has a slot."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    sec = _sections(data)
    if b".rela.plt" not in sec or b".dynsym" not in sec:
        return None
    names, values = _symbols(data, sec)
    off, size, _link, ent = sec[b".rela.plt"]
    found: dict[bytes, tuple[int, int]] = {}
    for i in range(size // ent):
        r_offset, r_info, _addend = struct.unpack_from("<QQq", data, off + i * ent)
        if r_info & 0xFFFFFFFF == R_X86_64_JUMP_SLOT and names[r_info >> 32] in TARGETS:
            found[names[r_info >> 32]] = (r_offset, values[r_info >> 32])
    if len(found) != len(TARGETS):
        return None
    return found, values[names.index(ANCHOR)]


_installed: bool | None = None


def install(lib: ctypes.CDLL) -> bool:
    """Point the engine's PLT slots for TARGETS at engine_watch.c (once per process). False (with a log line)
    when this engine build does not allow it."""
    global _installed
    if _installed is None:
        _installed = _install(lib)
    return _installed


def _address(obj: Any) -> int | None:
    return ctypes.cast(obj, ctypes.c_void_p).value


def _install(lib: ctypes.CDLL) -> bool:
    try:
        path = Path(uclib._name)
        found = _slots(path)
        if found is None:
            log.info("store watch: %s lacks a PLT slot for one of %s; using the write hook", path, TARGETS)
            return False
        slots, anchor_value = found
        anchor = _address(uclib.uc_version)
        if anchor is None:
            return False
        base = anchor - anchor_value
        real = {t: _address(getattr(uclib, t.decode())) for t in TARGETS}
        if any(real[t] != base + value for t, (_slot, value) in slots.items()):
            log.info("store watch: the engine's functions are not where its ELF says; using the write hook")
            return False
        helpers = [_address(getattr(uclib, h)) for h in HELPERS]
        libc = ctypes.CDLL(None, use_errno=True)
        for slot_off, _value in slots.values():
            page = (base + slot_off) & ~0xFFF
            if libc.mprotect(ctypes.c_void_p(page), ctypes.c_size_t(0x1000), 3) != 0:  # PROT_READ | PROT_WRITE
                log.info("store watch: cannot make a PLT slot writable; using the write hook")
                return False
        lib.vn_set_real_tbipf(ctypes.c_void_p(real[TBIPF]))
        lib.vn_set_engine_fns(*(ctypes.c_void_p(a) for a in (real[TLB_SET_PAGE], real[PROTECT_CODE], *helpers)))
        wrappers = {TBIPF: "vn_tbipf", TLB_SET_PAGE: "vn_tlb_set_page", PROTECT_CODE: "vn_protect_code"}
        for target, (slot_off, _value) in slots.items():
            ctypes.c_uint64.from_address(base + slot_off).value = _address(getattr(lib, wrappers[target])) or 0
        return True
    except (OSError, ValueError, KeyError, AttributeError, IndexError, struct.error) as exc:
        log.info("store watch unavailable (%s); using the write hook", exc)
        return False
