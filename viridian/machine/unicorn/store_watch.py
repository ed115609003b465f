"""Seeing every guest store into code, at no cost to the others (ENGINE_NOTES.md, "Each Uc has its own translation cache").

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
  vCPU's TLB entries for it get the flag back (``tlb_reset_dirty``), so from then on its stores are seen;
- ``tb_gen_code`` -> ``vn_tb_gen_code``: the translator walks the whole code-hook list for every instruction;
  while it translates a block of the running vCPU it sees only the hooks that can apply to the block's pages
  (the list's place in the engine is found by behaviour, :func:`code_hook_list_offset`; if it is not found
  the wrapper only passes the call on);
- ``cpu_svm_check_intercept_param`` -> ``vn_svm_check``: the engine's PAUSE helper asks it about an SVM
  intercept first, which is where the machine counts the PAUSE and applies pause-loop exiting -- no PAUSE
  needs a code hook;
- ``tcg_gen_qemu_ld/st_i32``/``_i64`` -> ``vn_gen_ld/st_i32``/``_i64`` (optional): guest loads (and, with
  block entry, stores) are translated without the exit-request helper call Unicorn puts after every access.
- ``x86_stl_phys_notdirty`` -> ``vn_stl_notdirty`` (optional): the page walker's Accessed/Dirty update is
  dropped for an entry in a read-only overlay page (the hypervisor's bytes stay; QEMU's answer for ROM).

If a slot cannot be found or does not hold what we expect (another Unicorn build), none is redirected and
the machine falls back to the native write hook (``vn_write``): same answers, slower.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import struct
from pathlib import Path
from typing import Any

from unicorn.unicorn_py3.unicorn import uclib

log = logging.getLogger("viridian.machine.unicorn.store_watch")

TBIPF, TLB_SET_PAGE, PROTECT_CODE = (b"tb_invalidate_phys_page_fast_x86_64", b"tlb_set_page_with_attrs_x86_64",
                                     b"tlb_protect_code_x86_64")
TB_GEN_CODE, SVM_CHECK = b"tb_gen_code_x86_64", b"cpu_svm_check_intercept_param_x86_64"
TARGETS = (TBIPF, TLB_SET_PAGE, PROTECT_CODE, TB_GEN_CODE, SVM_CHECK)
LD_I32, LD_I64 = b"tcg_gen_qemu_ld_i32_x86_64", b"tcg_gen_qemu_ld_i64_x86_64"
ST_I32, ST_I64 = b"tcg_gen_qemu_st_i32_x86_64", b"tcg_gen_qemu_st_i64_x86_64"
OPTIONAL = (LD_I32, LD_I64, ST_I32, ST_I64)  # redirected too when present (accesses without exit checks)
WALK_AD = b"x86_stl_phys_notdirty_x86_64"  # the page walker's A/D update (vn_stl_notdirty), when present
HELPERS = ("tlb_set_dirty_x86_64", "tlb_reset_dirty_x86_64")  # called by engine_watch.c, not redirected
ANCHOR = b"uc_version"
R_X86_64_JUMP_SLOT = 7


def _sections(data: Any) -> dict[bytes, tuple[int, int, int, int]]:
    """name -> (offset, size, link, entsize) of each section of an ELF64 little-endian file."""
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    heads = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_off = heads[shstrndx][4]
    out = {}
    for name, _t, _f, _a, off, size, link, _i, _al, ent in heads:
        end = data.find(b"\0", names_off + name)
        out[bytes(data[names_off + name:end])] = (off, size, link, ent)
    return out


class _Symbols:
    """The dynamic symbols of an ELF64 file, read on demand (a full table is ~30,000 names)."""

    def __init__(self, data: Any, sec: dict[bytes, tuple[int, int, int, int]]) -> None:
        self.data, (self.off, size, _link, self.ent) = data, sec[b".dynsym"]
        self.count, self.str_off = size // self.ent, sec[b".dynstr"][0]

    def name(self, i: int) -> bytes:
        at = self.str_off + struct.unpack_from("<I", self.data, self.off + i * self.ent)[0]
        return bytes(self.data[at:self.data.find(b"\0", at)])

    def value(self, i: int) -> int:
        return int(struct.unpack_from("<Q", self.data, self.off + i * self.ent + 8)[0])

    def index(self, name: bytes, strtab_size: int) -> int:
        """The symbol called ``name``: where its string (or a string ending in it) lies in the string table,
        then the entry naming one of those places."""
        places, at = set(), self.str_off
        while (at := self.data.find(name + b"\0", at, self.str_off + strtab_size)) >= 0:
            places.add(at - self.str_off)
            at += 1
        table = self.data[self.off:self.off + self.count * self.ent]
        for i, (st_name,) in enumerate(struct.iter_unpack(f"<I{self.ent - 4}x", table)):
            if st_name in places and self.name(i) == name:
                return i
        raise KeyError(name)


def _slots(path: Path) -> tuple[dict[bytes, tuple[int, int]], int] | None:
    """({target: (GOT slot, target's value)}, ANCHOR's value) from the engine library's ELF, relative to its
    load base; None unless every target has a slot. The file is mapped, not read (it is ~25 MB)."""
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
            return None
        sec = _sections(data)
        if b".rela.plt" not in sec or b".dynsym" not in sec:
            return None
        syms = _Symbols(data, sec)
        off, size, _link, ent = sec[b".rela.plt"]
        found: dict[bytes, tuple[int, int]] = {}
        wanted = {*TARGETS, *OPTIONAL, WALK_AD}
        for i in range(size // ent):
            r_offset, r_info, _addend = struct.unpack_from("<QQq", data, off + i * ent)
            if r_info & 0xFFFFFFFF == R_X86_64_JUMP_SLOT and (name := syms.name(r_info >> 32)) in wanted:
                found[name] = (r_offset, syms.value(r_info >> 32))
        if any(t not in found for t in TARGETS):
            return None
        return found, syms.value(syms.index(ANCHOR, sec[b".dynstr"][1]))


_installed: bool | None = None
CODE_FILTER: tuple[int, int] | None = None  # (the code-hook list's offset, 0 = not found; the real tb_gen_code)


def use_code_filter(lib: ctypes.CDLL, on: bool) -> None:
    """Turn the translation filter on or off (process-wide; engine_build's ``code_filter``)."""
    if CODE_FILTER is not None:
        lib.vn_set_code_filter(CODE_FILTER[0] if on else 0, ctypes.c_void_p(CODE_FILTER[1]))


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
    global QUIET_LOADS
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
        real = {t: _address(getattr(uclib, t.decode(), None)) for t in slots}
        if any(real[t] != base + value for t, (_slot, value) in slots.items()):
            log.info("store watch: the engine's functions are not where its ELF says; using the write hook")
            return False
        helpers = [_address(getattr(uclib, h)) for h in HELPERS]
        if None in helpers:
            return False
        libc = ctypes.CDLL(None, use_errno=True)
        for slot_off, _value in slots.values():
            page = (base + slot_off) & ~0xFFF
            if libc.mprotect(ctypes.c_void_p(page), ctypes.c_size_t(0x1000), 3) != 0:  # PROT_READ | PROT_WRITE
                log.info("store watch: cannot make a PLT slot writable; using the write hook")
                return False
        lib.vn_set_real_tbipf(ctypes.c_void_p(real[TBIPF]))
        lib.vn_set_engine_fns(*(ctypes.c_void_p(a) for a in (real[TLB_SET_PAGE], real[PROTECT_CODE], *helpers)))
        global CODE_FILTER
        CODE_FILTER = (code_hook_list_offset(lib) or 0, real[TB_GEN_CODE] or 0)
        lib.vn_set_code_filter(CODE_FILTER[0], ctypes.c_void_p(CODE_FILTER[1]))
        lib.vn_set_real_svm_check(ctypes.c_void_p(real[SVM_CHECK]))
        wrappers = {TBIPF: "vn_tbipf", TLB_SET_PAGE: "vn_tlb_set_page", PROTECT_CODE: "vn_protect_code",
                    TB_GEN_CODE: "vn_tb_gen_code", SVM_CHECK: "vn_svm_check"}
        if WALK_AD in slots:  # A/D updates into read-only overlays are dropped (engine_watch.c)
            lib.vn_set_real_stl_notdirty(ctypes.c_void_p(real[WALK_AD]))
            wrappers[WALK_AD] = "vn_stl_notdirty"
        offsets = _quiet_loads_offsets()
        if offsets is not None and all(t in slots for t in OPTIONAL):
            lib.vn_set_quiet_loads(ctypes.c_void_p(real[LD_I32]), ctypes.c_void_p(real[LD_I64]),
                                   *(ctypes.c_uint64(o) for o in offsets))
            lib.vn_set_quiet_stores(ctypes.c_void_p(real[ST_I32]), ctypes.c_void_p(real[ST_I64]))
            wrappers.update({LD_I32: "vn_gen_ld_i32", LD_I64: "vn_gen_ld_i64", ST_I32: "vn_gen_st_i32",
                             ST_I64: "vn_gen_st_i64"})
            QUIET_LOADS = True
        for target, (slot_off, _value) in slots.items():
            if target in wrappers:
                ctypes.c_uint64.from_address(base + slot_off).value = _address(getattr(lib, wrappers[target])) or 0
        _install_tb_entry(lib)
        return True
    except (OSError, ValueError, KeyError, AttributeError, IndexError, struct.error) as exc:
        log.info("store watch unavailable (%s); using the write hook", exc)
        return False


def _mappings(perms_prefix: str = "r", path: str | None = None) -> list[tuple[int, int]]:
    """Address ranges in /proc/self/maps whose permissions start with ``perms_prefix`` (and, given ``path``,
    that map that file)."""
    out = []
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                parts = line.split(maxsplit=5)
                named = len(parts) == 6 and parts[5].strip() == path
                if parts[1].startswith(perms_prefix) and (path is None or named):
                    lo, hi = parts[0].split("-")
                    out.append((int(lo, 16), int(hi, 16)))
    except OSError:
        return []
    return out


# -- block entry (csrc/block_entry.c) ------------------------------------------------------------------------
CHECK_EXIT = "helper_check_exit_request_x86_64"
# its first two instructions: mov disp32(%rdi), %r8 (uc->cpu); mov disp32(%r8), %eax (the exit-request word)
_CHECK_PROLOGUE = (b"\x4c\x8b\x87", b"\x41\x8b\x80")
TB_ENTRY: tuple[int, int] | None = None  # (offset of the CPU in the engine, of the exit-request word in it)
TB_ENTRY_ENV = "VIRIDIAN_BLOCK_HOOK"     # set (to anything but 0): count blocks with the block hook instead


def _install_tb_entry(lib: ctypes.CDLL) -> None:
    """Blocks of the vCPUs' engines start in vn_tb_enter (no block hook), if the engine's exit-request check
    starts as block_entry.c expects and its code buffer is writable."""
    global TB_ENTRY
    fn = _address(getattr(uclib, CHECK_EXIT, None))
    if fn is None:
        return
    head = ctypes.string_at(fn, 14)
    if head[:3] != _CHECK_PROLOGUE[0] or head[7:10] != _CHECK_PROLOGUE[1]:
        log.info("block entry: %s does not start as expected; using the block hook", CHECK_EXIT)
        return
    cpu_off, exit_off = struct.unpack_from("<ii", head, 3)[0], struct.unpack_from("<i", head, 10)[0]
    if not _code_buffer_writable():
        log.info("block entry: the engine's code buffer is not writable; using the block hook")
        return
    spans = _mappings("", str(Path(uclib._name).resolve()))
    if not spans:
        return
    lib.vn_set_tb_entry(ctypes.c_void_p(fn), min(lo for lo, _ in spans), max(hi for _, hi in spans))
    TB_ENTRY = (cpu_off, exit_off)


# The translator's check_exit_request(tcg_ctx) emits an exit-request helper call after every guest load and
# store (and after each code hook) unless uc->no_exit_request is set; it starts with
# mov disp32(%rdi), %rsi (tcg_ctx->uc); cmpb $0, disp32(%rsi) (uc->no_exit_request)
GEN_CHECK_EXIT = "check_exit_request_x86_64"
_GEN_CHECK_PROLOGUE = (b"\x48\x8b\xb7", b"\x80\xbe")
QUIET_ENV = "VIRIDIAN_ACCESS_EXIT_CHECKS"  # set (to anything but 0): guest accesses keep their exit checks
QUIET_LOADS = False  # the load generators are redirected (engine_watch.c vn_gen_ld_i32/_i64)


def _quiet_loads_offsets() -> tuple[int, int] | None:
    """(offset of the engine in the TCG context, of no_exit_request in the engine), read from the first two
    instructions of check_exit_request; None if it does not start as expected."""
    fn = _address(getattr(uclib, GEN_CHECK_EXIT, None))
    if fn is None:
        return None
    head = ctypes.string_at(fn, 14)
    if head[:3] != _GEN_CHECK_PROLOGUE[0] or head[7:9] != _GEN_CHECK_PROLOGUE[1] or head[13] != 0:
        log.info("translation: %s does not start as expected; loads keep their exit checks", GEN_CHECK_EXIT)
        return None
    return struct.unpack_from("<i", head, 3)[0], struct.unpack_from("<i", head, 9)[0]


def quiet_loads_enabled() -> bool:
    from viridian.machine.unicorn.engine_build import enabled

    return QUIET_LOADS and enabled("quiet_access")


def precise_write_protect() -> bool:
    """Stores into read-only overlays stop at the storing instruction from vn_tbipf (it leaves the engine
    through the exit-request check, so block entry's installation must have found it): the pages then stay
    writable regions, and stores need no exit checks."""
    return bool(_installed) and TB_ENTRY is not None


def _code_buffer_writable() -> bool:
    """An engine's translation buffer (a new read-write-execute mapping of at least 1 MiB) appears when it
    first runs code."""
    from unicorn import UC_MODE_64

    from viridian.machine.unicorn.engine_build import new_uc

    before = set(_mappings("rwx"))
    uc: Any = new_uc(UC_MODE_64)
    uc.mem_map(0x1000, 0x1000)
    uc.mem_write(0x1000, b"\x90\xf4")
    uc.emu_start(0x1000, 0x1001)
    fresh = [r for r in _mappings("rwx") if r not in before and r[1] - r[0] >= 1 << 20]
    return bool(fresh)


def tb_entry_enabled() -> bool:
    from viridian.machine.unicorn.engine_build import enabled

    return TB_ENTRY is not None and enabled("block_entry")


HOOK_BEGIN_OFFSET = 0x18  # struct hook: begin and end (vn_tb_gen_code's HOOK_BEGIN), checked below


def code_hook_list_offset(lib: ctypes.CDLL, scan: int = 0x3000) -> int | None:
    """Where a Uc keeps its UC_HOOK_CODE list ({head, tail} of list_items {next, data = struct hook *}), found
    by behaviour on a scratch engine: the one pair of words that goes from empty to one item holding the hook
    just added, and to a second item when a second hook is added. Pointers are followed only into readable
    mappings (/proc/self/maps). None when nothing fits (the filter stays off)."""
    from unicorn import UC_HOOK_CODE, UC_MODE_64

    from viridian.machine.unicorn import engine as E
    from viridian.machine.unicorn.engine_build import new_uc

    fn = _address(lib.vn_site) or 0
    uc: Any = new_uc(UC_MODE_64)
    base: int = uc._uch.value
    maps = _mappings()

    def near(p: int, size: int = 16) -> bool:
        return any(lo <= p and p + size <= hi for lo, hi in maps)

    if not near(base, scan):
        return None
    before = ctypes.string_at(base, scan)
    h1 = E.hook_add_native(uc, UC_HOOK_CODE, fn, 0, 0x1234, 0x1237)
    after = ctypes.string_at(base, scan)

    def word(at: int) -> int:
        return ctypes.c_uint64.from_address(at).value

    if not (word(h1 + HOOK_BEGIN_OFFSET) == 0x1234 and word(h1 + HOOK_BEGIN_OFFSET + 8) == 0x1237):
        return None
    found = []
    for k in range(0, scan - 16, 8):
        b0, b1 = struct.unpack_from("<QQ", before, k)
        a0, a1 = struct.unpack_from("<QQ", after, k)
        if b0 == b1 == 0 and a0 == a1 != 0 and near(a0) and word(a0 + 8) == h1 and word(a0) == 0:
            found.append(k)
    if len(found) != 1:
        return None
    k = found[0]
    h2 = E.hook_add_native(uc, UC_HOOK_CODE, fn, 0, 0x2000, 0x2000)
    head, tail = word(base + k), word(base + k + 8)
    if head != struct.unpack_from("<Q", after, k)[0] or not near(tail) or word(tail + 8) != h2 or word(head) != tail:
        return None
    return k
