"""Unicorn specifics shared by the vCPUs: register ids, the native hook entry points, the #DF hazard fix.

The #DF hazard (docs: unicorn-engine-notes): Unicorn never runs QEMU's do_interrupt, so
``env->old_exception`` is never reset and a second contributory fault is escalated to a spurious #DF.
We find that field's offset in the saved CPU context *by behaviour* at start-up (a scratch engine takes a
#PF; the candidate int32 that then holds a fault vector and, once reset to -1, makes the next #GP arrive
as #GP is the one), and reset it in every exception hook. No build-specific offset is compiled in.
"""

from __future__ import annotations

import ctypes
import logging
import struct
from functools import cache
from typing import Any

from unicorn import UC_HOOK_INTR, UC_MODE_64, UC_PROT_ALL, Uc, UcError
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

from viridian.machine.unicorn.engine_build import new_uc

log = logging.getLogger(__name__)

MAX_ADDR = 0xFFFF_FFFF_FFFF_FFFF
GPR = (X.UC_X86_REG_RAX, X.UC_X86_REG_RBX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX, X.UC_X86_REG_RSI,
       X.UC_X86_REG_RDI, X.UC_X86_REG_R8)
XMM = (X.UC_X86_REG_XMM0, X.UC_X86_REG_XMM1, X.UC_X86_REG_XMM2, X.UC_X86_REG_XMM3, X.UC_X86_REG_XMM4,
       X.UC_X86_REG_XMM5)
REG_BY_NAME = {"rax": X.UC_X86_REG_RAX, "rbx": X.UC_X86_REG_RBX, "rcx": X.UC_X86_REG_RCX,
               "rdx": X.UC_X86_REG_RDX, "rsi": X.UC_X86_REG_RSI, "rdi": X.UC_X86_REG_RDI,
               "r8": X.UC_X86_REG_R8, **{f"xmm{i}": r for i, r in enumerate(XMM)}}
EFER = 0xC000_0080
GPRS = (X.UC_X86_REG_RAX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX, X.UC_X86_REG_RBX, X.UC_X86_REG_RSP,
        X.UC_X86_REG_RBP, X.UC_X86_REG_RSI, X.UC_X86_REG_RDI, X.UC_X86_REG_R8, X.UC_X86_REG_R9,
        X.UC_X86_REG_R10, X.UC_X86_REG_R11, X.UC_X86_REG_R12, X.UC_X86_REG_R13, X.UC_X86_REG_R14,
        X.UC_X86_REG_R15)  # by x86 register number (ModRM encoding order)


# Measured on Unicorn 2.1.4: at the end of every emu_start the engine invalidates its translation of
# ``until - 1`` (resume_all_vcpus); when that address is not mapped the failed translation writes it into
# the guest's CR2 and can surface as a #PF through the interrupt hook. The machine runs with ``until`` =
# MAX_ADDR, keeps the guest's CR2 across each run and drops a #PF for exactly this address (no guest maps
# the last bytes of the address space). Switching ``until`` off instead (UC_CTL_UC_USE_EXITS with no
# exits) made a Debian kernel execute zeroed memory early in setup_arch -- not pursued.
SPURIOUS_CR2 = MAX_ADDR - 1


def c_function(name: str) -> int:
    """Address of a libunicorn entry point (handed to the native hooks)."""
    value = ctypes.cast(getattr(uclib, name), ctypes.c_void_p).value
    assert value is not None
    return value


def hook_add_native(uc: Uc, htype: int, fn: int, user: ctypes.c_void_p | int, begin: int, end: int) -> int:
    handle = ctypes.c_size_t()
    status = uclib.uc_hook_add(uc._uch, ctypes.byref(handle), htype, ctypes.c_void_p(fn), user,
                               ctypes.c_uint64(begin), ctypes.c_uint64(end))
    if status != 0:
        raise UcError(status)
    return handle.value


def hook_insn_native(uc: Uc, insn: int, fn: int, user: int) -> int:
    """An instruction hook (UC_HOOK_INSN) with a C callback, e.g. vn_rdtsc."""
    handle = ctypes.c_size_t()
    status = uclib.uc_hook_add(uc._uch, ctypes.byref(handle), 2, ctypes.c_void_p(fn), ctypes.c_void_p(user),
                               ctypes.c_uint64(1), ctypes.c_uint64(0), ctypes.c_int(insn))
    if status != 0:
        raise UcError(status)
    return handle.value


def ram_addr_from_host(uc: Uc, host: int) -> int:
    """The engine's RAM offset (its ``ram_addr_t``) of host address ``host`` inside guest RAM."""
    fn = uclib.qemu_ram_addr_from_host_x86_64
    fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_void_p], ctypes.c_uint64
    return int(fn(uc._uch, ctypes.c_void_p(host)))


def hook_del_native(uc: Uc, handle: int) -> None:
    """Remove a hook added with :func:`hook_add_native` (the binding's hook_del only knows its own)."""
    status = uclib.uc_hook_del(uc._uch, ctypes.c_size_t(handle))
    if status != 0:
        raise UcError(status)


def context_bytes(uc: Any) -> tuple[Any, bytearray]:
    ctx = uc.context_save()
    return ctx, bytearray(ctypes.string_at(ctx.context, ctx.size))


def _scratch(ram: Any) -> Any:
    uc = new_uc(UC_MODE_64)
    uc.mem_map_ptr(0, len(ram), UC_PROT_ALL, ctypes.addressof(ram))
    q = lambda a, v: struct.pack_into("<Q", ram, a, v)  # noqa: E731
    q(0x1000, 0x2003), q(0x2000, 0x3003), q(0x3000, 0x83)  # 2 MiB identity page at 0
    q(0x500, 0), q(0x508, 0x00209A0000000000), q(0x510, 0x0000920000000000)
    uc.reg_write(X.UC_X86_REG_GDTR, (0, 0x500, 0x17, 0))
    uc.reg_write(X.UC_X86_REG_CR3, 0x1000)
    uc.reg_write(X.UC_X86_REG_CR4, 0x620)
    uc.msr_write(EFER, 0x500)
    uc.reg_write(X.UC_X86_REG_CR0, 0x80010033)
    uc.reg_write(X.UC_X86_REG_CS, 8)
    uc.reg_write(X.UC_X86_REG_SS, 0x10)
    uc.reg_write(X.UC_X86_REG_RSP, 0x8000)
    return uc


def _fault_once(uc: Any, ram: Any, code: bytes, at: int) -> list[int]:
    ram[at : at + len(code)] = code
    seen: list[int] = []

    def hook(u: Uc, intno: int, _ud: object) -> None:
        seen.append(intno)
        u.reg_write(X.UC_X86_REG_RIP, u.reg_read(X.UC_X86_REG_RIP) + 3)

    h = uc.hook_add(UC_HOOK_INTR, hook)
    try:
        uc.emu_start(at, MAX_ADDR, count=8)
    finally:
        uc.hook_del(h)
    return seen


_PF = bytes.fromhex("48bb00000000007f0000488b03f4")  # mov rbx, 0x7f0000000000; mov rax, [rbx]; hlt
_GP = bytes.fromhex("48bb0000000000f07f00488b03f4")  # non-canonical load


@cache
def old_exception_offset() -> int | None:
    """Offset of QEMU's ``old_exception`` in Unicorn's saved context, found by behaviour (None: not found)."""
    ram = (ctypes.c_ubyte * (2 << 20))()
    try:
        uc = _scratch(ram)
        _, before = context_bytes(uc)
        if _fault_once(uc, ram, _PF, 0x10000) != [14]:
            return None
        ctx, after = context_bytes(uc)
        candidates = [o for o in range(0, len(after) - 3, 4)
                      if struct.unpack_from("<i", before, o)[0] == -1
                      and struct.unpack_from("<i", after, o)[0] in (8, 13, 14)]
        for off in candidates:
            patched = bytearray(after)
            struct.pack_into("<i", patched, off, -1)
            ctypes.memmove(ctx.context, bytes(patched), len(patched))
            uc.context_restore(ctx)
            if _fault_once(uc, ram, _GP, 0x20000) == [13]:
                return off
            _fault_once(uc, ram, _PF, 0x30000)
            ctx, after = context_bytes(uc)
    except UcError:
        log.exception("probing Unicorn's exception state failed")
    return None


def reset_old_exception(uc: Uc, offset: int) -> None:
    ctx = uc.context_save()
    ptr = ctypes.cast(ctx.context, ctypes.POINTER(ctypes.c_int32))
    ptr[offset // 4] = -1
    uc.context_restore(ctx)


# iretq to CPL 3 (CS 0x1B, SS 0x23) at 0x11000, where "mov rax, cr0" must #GP; the stack frame is at 0x7FD8
_TO_USER = bytes.fromhex("48bc d87f000000000000 48cf".replace(" ", ""))  # mov rsp, 0x7fd8; iretq
_PRIV = bytes.fromhex("0f20c0f4")  # mov rax, cr0; hlt


@cache
def hflags_offset() -> int | None:
    """Offset of QEMU's ``hflags`` (its low two bits are the CPL) in Unicorn's saved context, found by
    behaviour: Unicorn checks privilege against hflags, which a segment-register write cannot lower, so a
    fault taken at CPL 3 is delivered to CPL 0 by patching them (None: not found)."""
    ram = (ctypes.c_ubyte * (2 << 20))()
    try:
        uc = _scratch(ram)
        q = lambda a, v: struct.pack_into("<Q", ram, a, v)  # noqa: E731
        q(0x518, 0x0020FA0000000000), q(0x520, 0x0000F20000000000)  # 0x18 user code, 0x20 user data (DPL 3)
        q(0x1000, 0x2007), q(0x2000, 0x3007), q(0x3000, 0x87)  # the identity page, user-accessible
        uc.reg_write(X.UC_X86_REG_GDTR, (0, 0x500, 0x27, 0))
        for i, v in enumerate((0x11000, 0x1B, 0x202, 0x9000, 0x23)):  # RIP CS RFLAGS RSP SS
            q(0x7FD8 + 8 * i, v)
        ctypes.memmove(ctypes.addressof(ram) + 0x10000, _TO_USER, len(_TO_USER))
        ctypes.memmove(ctypes.addressof(ram) + 0x11000, _PRIV, len(_PRIV))
        _, kernel = context_bytes(uc)
        seen: list[int] = []

        def hook(u: Uc, intno: int, _ud: object) -> None:
            seen.append(intno)
            u.emu_stop()

        h = uc.hook_add(UC_HOOK_INTR, hook)
        uc.emu_start(0x10000, MAX_ADDR, count=4)
        if seen != [13]:
            return None
        ctx, user = context_bytes(uc)
        for off in range(0, min(len(user), len(kernel)) - 3, 4):
            k, u = struct.unpack_from("<I", kernel, off)[0], struct.unpack_from("<I", user, off)[0]
            if k & 3 or u & 3 != 3 or (k ^ u) & 0xC000:  # CPL 0 -> 3, same LMA/CS64 (bits 14, 15)
                continue
            patched = bytearray(user)
            struct.pack_into("<I", patched, off, u & ~3)
            ctypes.memmove(ctx.context, bytes(patched), len(patched))
            uc.context_restore(ctx)
            seen.clear()
            uc.emu_start(0x11000, MAX_ADDR, count=1)
            if not seen:
                uc.hook_del(h)
                return off
            ctypes.memmove(ctx.context, bytes(user), len(user))
            uc.context_restore(ctx)
        uc.hook_del(h)
    except UcError:
        log.exception("probing Unicorn's privilege state failed")
    return None


def set_cpl(uc: Uc, offset: int, cpl: int) -> None:
    """Set the hidden CPL (hflags bits 1:0) before loading CS/SS of another privilege level."""
    ctx = uc.context_save()
    ptr = ctypes.cast(ctx.context, ctypes.POINTER(ctypes.c_uint32))
    ptr[offset // 4] = (ptr[offset // 4] & ~3) | cpl
    uc.context_restore(ctx)


_INSN_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)


def hook_insn_skip(uc: Uc, insn: int, fn: object) -> object:
    """An instruction hook returning 1 to skip the instruction (RDTSC/RDTSCP: the Python binding only
    wraps IN/OUT/SYSCALL/CPUID, libunicorn itself supports these). Keep the returned object alive."""
    cb = _INSN_CB(lambda _uc, _ud: fn(uc, None))  # type: ignore[operator]
    handle = ctypes.c_size_t()
    status = uclib.uc_hook_add(uc._uch, ctypes.byref(handle), 2, ctypes.cast(cb, ctypes.c_void_p), None,
                               ctypes.c_uint64(1), ctypes.c_uint64(0), ctypes.c_int(insn))
    if status != 0:
        raise UcError(status)
    return cb


class _Mmr(ctypes.Structure):
    _fields_ = [("selector", ctypes.c_uint16), ("base", ctypes.c_uint64), ("limit", ctypes.c_uint32),
                ("flags", ctypes.c_uint32)]  # uc_x86_mmr


class MmrReg:
    """One descriptor-table register (IDTR, GDTR, TR, LDTR) read with a raw libunicorn call."""

    def __init__(self, uc: Any, reg: int) -> None:
        self._uch, self._reg, self._v = uc._uch, reg, _Mmr()
        self._ptr = ctypes.byref(self._v)

    def read(self) -> tuple[int, int, int, int]:
        uclib.uc_reg_read(self._uch, self._reg, self._ptr)
        v = self._v
        return v.selector, v.base, v.limit, v.flags


@cache
def _bare(name: str) -> Any:
    """libunicorn's ``name`` without argument conversion (a second handle on the same library, so the binding's
    own declaration is untouched): callers pass ready ctypes arguments. A declared call converts its four
    arguments on every call (~2 us, more than the call itself); FastRegs runs on every exit and slice."""
    fn = getattr(ctypes.CDLL(uclib._name), name)
    fn.argtypes, fn.restype = None, ctypes.c_int
    return fn


class FastRegs:
    """A fixed register set read/written with one raw libunicorn batch call (the binding's own batch
    helpers cost ~20 us per call in Python; this is the exit hot path). Every slot is 16 bytes so XMM
    registers fit; 64-bit registers use the low half."""

    def __init__(self, uc: Any, regs: tuple[int, ...]) -> None:
        self._uch = uc._uch
        self.n = len(regs)
        self._ids = (ctypes.c_int * self.n)(*regs)
        self._buf = (ctypes.c_uint64 * (2 * self.n))()
        base = ctypes.addressof(self._buf)
        self._ptrs = (ctypes.c_void_p * self.n)(*[base + 16 * i for i in range(self.n)])
        self._read = _bare("uc_reg_read_batch")
        self._write = _bare("uc_reg_write_batch")
        self._args = (self._uch, ctypes.byref(self._ids), ctypes.byref(self._ptrs))
        self._all = ctypes.c_int(self.n)

    def read(self) -> list[int]:
        """Low 64 bits of every register."""
        self._read(*self._args, self._all)
        return self._buf[0 : 2 * self.n : 2]

    def read_wide(self, first: int, count: int) -> list[int]:
        """Full 128 bits of slots ``first .. first+count-1`` from the last :meth:`read`."""
        q = struct.unpack_from(f"<{2 * count}Q", self._buf, 16 * first)
        return [q[2 * i] | q[2 * i + 1] << 64 for i in range(count)]

    def write(self, *values: int) -> None:
        buf = self._buf
        for i, v in enumerate(values):
            buf[2 * i] = v & 0xFFFF_FFFF_FFFF_FFFF
            buf[2 * i + 1] = 0
        self._write(*self._args, self._all if len(values) == self.n else ctypes.c_int(len(values)))


CODE_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_void_p)


def hook_code_raw(uc: Any, fn: Any, begin: int, end: int) -> tuple[int, object]:
    """A UC_HOOK_CODE calling ``fn(uc, address, size, None)`` through a bare ctypes callback (skips the
    binding's per-call wrapper layers; this is the MSR-exit hot path). Returns (handle, keep-alive)."""
    cb = CODE_CB(lambda _h, address, size, _ud: fn(uc, address, size, None))
    handle = ctypes.c_size_t()
    status = uclib.uc_hook_add(uc._uch, ctypes.byref(handle), 4, ctypes.cast(cb, ctypes.c_void_p), None,
                               ctypes.c_uint64(begin), ctypes.c_uint64(end))
    if status != 0:
        raise UcError(status)
    return handle.value, cb


# Measured on Unicorn 2.1.4: uc_reg_write of RIP sets a mark in the engine ("skip the PC sync on the next
# exit", so a PC a hook writes survives the exit it requests) and asks the CPU to exit. Written in the INTR
# hook, that exit request is consumed by the engine's own loop before any block checks it, so the mark
# outlived the hook: the next stop at a block start (slice budget, new sites, a store into code) kept the
# PC the engine had last stored -- after directly chained blocks, a block that had already run -- and the
# vCPU ran those instructions again. Debian on 2 vCPUs: a call executed twice left RSP 8 bytes low
# ("stack-protector: Kernel stack is corrupted"; fixtures/guests/machine/exc_resume.S reproduces it).
_CHECK_EXIT = "helper_check_exit_request_x86_64"


@cache
def pc_mark_offset() -> int | None:
    """Offset of that mark in the engine handle: the byte the exit-request helper tests (cmpb $0, d(%rdi)) and
    clears (movb $0, d(%rdi)), checked by behaviour on a scratch engine (set by a RIP write only)."""
    off = _find_pc_mark()
    if off is None:
        log.warning("engine: the PC mark of a RIP write was not found; a stop after an exception may resume at "
                    "a stale PC (viridian/machine/unicorn/ENGINE_NOTES.md)")
    return off


def _find_pc_mark() -> int | None:
    sym = getattr(uclib, _CHECK_EXIT, None)
    fn = ctypes.cast(sym, ctypes.c_void_p).value if sym is not None else None
    if fn is None:
        return None
    code, off = ctypes.string_at(fn, 0x60), None
    at = code.find(b"\x80\xbf")
    while at >= 0 and off is None:
        disp = code[at + 2:at + 6]
        if code[at + 6:at + 7] == b"\0" and b"\xc6\x87" + disp + b"\0" in code:
            off = struct.unpack("<i", disp)[0]
        at = code.find(b"\x80\xbf", at + 1)
    if off is None:
        return None
    try:
        uc = new_uc(UC_MODE_64)
        uc.mem_map(0x1000, 0x1000)
        uc.mem_write(0x1000, b"\x90\xf4")
        uc.emu_start(0x1000, 0x1001)
        mark = ctypes.c_uint8.from_address(uc._uch.value + off)
        before = mark.value
        uc.reg_write(X.UC_X86_REG_RAX, 1)
        after_gpr = mark.value
        uc.reg_write(X.UC_X86_REG_RIP, 0x1000)
        if (before, after_gpr, mark.value) != (0, 0, 1):
            return None
    except UcError:
        return None
    return off


def drop_pc_mark(uc: Any) -> None:
    """A RIP written in the INTR hook needs no mark: the exception ended the block and the engine fetches the
    next one at that RIP. Cleared so it cannot reach a later exit."""
    off = pc_mark_offset()
    if off is not None:
        ctypes.c_uint8.from_address(uc._uch.value + off).value = 0
