"""The reference engine's one Unicorn instance per machine, shared by all its vCPUs.

One translation cache for every vCPU: a store by any vCPU invalidates translated code for all of them (the
engine's own self-modifying-code handling), so no store watch is needed and a vCPU costs a saved context,
not an engine. The instance holds the registers of one vCPU at a time (:attr:`SharedEngine.cur`); switching
saves that vCPU's context (uc_context_save), restores the next one's and flushes the TLB (UC_CTL_TLB_FLUSH;
the TLB is not part of a context). Every hook is installed once and acts for :attr:`cur`.

Public API only: uc_* functions (through the binding or ctypes on its exported entry points), no compiled
helper, no patched engine code, no engine structure offsets.
"""

from __future__ import annotations

import ctypes
import logging
import sys
import weakref
from functools import cache
from typing import TYPE_CHECKING, Any

from unicorn import (
    UC_ARCH_X86,
    UC_HOOK_BLOCK,
    UC_HOOK_CODE,
    UC_HOOK_INSN,
    UC_HOOK_INSN_INVALID,
    UC_HOOK_INTR,
    UC_HOOK_MEM_READ_UNMAPPED,
    UC_HOOK_MEM_WRITE_PROT,
    UC_HOOK_MEM_WRITE_UNMAPPED,
    UC_MODE_64,
    UC_PROT_ALL,
    UC_PROT_EXEC,
    UC_PROT_READ,
    Uc,
    UcError,
)
from unicorn import x86_const as X
from unicorn.unicorn_const import UC_CTL_IO_WRITE, UC_CTL_TLB_FLUSH
from unicorn.unicorn_py3.unicorn import uclib

from viridian.machine import layout as L
from viridian.machine.stubs import (
    HYPERCALL_HOOK_OFFSET,
    cr8_offsets,
    is_hypercall_stub,
    pause_offsets,
    site_offsets,
)

if TYPE_CHECKING:
    from viridian.machine.machine import Machine
    from viridian.machine.reference.vcpu import Vcpu

log = logging.getLogger(__name__)
TCG_BUFFER = 32 << 20  # translator buffer (Unicorn reserves 1 GiB by default; a Debian boot uses ~14 MiB)
MAX_ADDR = (1 << 64) - 1
_BLOCK_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_void_p)
_INTR_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p)
_INSN_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
_IN_CB = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_void_p)
_OUT_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p)
_SYSCALL_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)
_INVALID_CB = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p, ctypes.c_void_p)
_MEM_CB = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64, ctypes.c_int,
                           ctypes.c_int64, ctypes.c_void_p)

_ENGINES: weakref.WeakKeyDictionary[Any, SharedEngine] = weakref.WeakKeyDictionary()


def engine_of(m: Machine) -> SharedEngine:
    """The machine's shared engine (made by its first vCPU)."""
    eng = _ENGINES.get(m)
    if eng is None:
        eng = _ENGINES[m] = SharedEngine(m)
        if FAST_PATCHES in sys.modules:
            _warn_patched()
    return eng


# The fast engine redirects libunicorn's own functions for the whole process (its store_watch.py); once it has run
# here, this engine's translations are not Unicorn's own (measured: block boundaries and write-protect stops move).
FAST_PATCHES = "viridian.machine.unicorn.store_watch"


@cache
def _warn_patched() -> None:
    log.warning("the fast engine's engine patches are loaded in this process: the reference engine's results may "
                "differ from Unicorn's own (run it in a process of its own)")


class SharedEngine:
    """The Uc of one machine and the code facts all its vCPUs share (MSR/CR8/PAUSE sites, scanned pages)."""

    def __init__(self, m: Machine) -> None:
        self.m = m
        uc: Any = Uc(UC_ARCH_X86, UC_MODE_64)
        self.uc: Any = uc
        uc.ctl_set_tcg_buffer_size(TCG_BUFFER)
        uc.mem_map_ptr(0, m.ram_size, UC_PROT_ALL, ctypes.addressof(m.ram_buffer))
        self.h = uc._uch
        self.clean = uc.context_save()  # a fresh instance: CPL 0, no fault recorded (hidden.py)
        self.cur: Vcpu | None = None  # whose registers the instance holds
        self.scanned: set[int] = set()  # virtual pages searched for sites (hooks act by virtual address)
        self.sites: dict[int, bool] = {}  # MSR instruction address -> is WRMSR
        self.cr8_sites: dict[int, tuple[bool, int]] = {}
        self.pause_sites: set[int] = set()
        self.stub_at: set[int] = set()  # hook addresses inside our hypercall pages
        self.protected: set[int] = set()
        self.apic_pages: set[int] = set()
        self.unassigned: list[tuple[int, int]] = []
        self.map_changed = False
        self.closed: set[int] = set()
        self.devices: dict[int, dict[int, tuple[Any, Any]]] = {}  # MMIO base -> vCPU -> (read, write)
        self._keep: list[object] = []
        self._install()

    # -- hooks ------------------------------------------------------------------------------------------------
    def _add(self, htype: int, cb: Any, begin: int = 1, end: int = 0, *extra: Any) -> int:
        handle = ctypes.c_size_t()
        status = uclib.uc_hook_add(self.h, ctypes.byref(handle), htype, ctypes.cast(cb, ctypes.c_void_p), None,
                                   ctypes.c_uint64(begin), ctypes.c_uint64(end), *extra)
        if status != 0:
            raise UcError(status)
        self._keep.append(cb)
        return handle.value

    def _insn(self, insn: int, cb: Any) -> None:
        self._add(UC_HOOK_INSN, cb, 1, 0, ctypes.c_int(insn))

    def _install(self) -> None:
        self._add(UC_HOOK_BLOCK, _BLOCK_CB(self._block))
        self._add(UC_HOOK_INTR, _INTR_CB(lambda _h, intno, _u: self._call("interrupt", intno)))
        self._insn(X.UC_X86_INS_CPUID, _INSN_CB(lambda _h, _u: self._call("cpuid", default=1)))
        self._insn(X.UC_X86_INS_RDTSC, _INSN_CB(lambda _h, _u: self._call("rdtsc", False, default=1)))
        self._insn(X.UC_X86_INS_RDTSCP, _INSN_CB(lambda _h, _u: self._call("rdtsc", True, default=1)))
        self._insn(X.UC_X86_INS_IN, _IN_CB(lambda _h, port, size, _u: self._call("port_in", port, size, default=0)))
        self._insn(X.UC_X86_INS_OUT, _OUT_CB(lambda _h, port, size, value, _u: self._call("port_out", port, size,
                                                                                          value)))
        self._insn(X.UC_X86_INS_SYSCALL, _SYSCALL_CB(lambda _h, _u: self._call("syscall")))
        self._add(UC_HOOK_INSN_INVALID, _INVALID_CB(lambda _h, _u: self._call("invalid", default=True)))
        self._add(UC_HOOK_MEM_READ_UNMAPPED | UC_HOOK_MEM_WRITE_UNMAPPED, _MEM_CB(self._unmapped))
        self._add(UC_HOOK_MEM_WRITE_PROT, _MEM_CB(lambda _h, _t, addr, _s, _v, _u: self._call("write_protected",
                                                                                              addr, default=False)))
        self.uc.mmio_map(L.APIC_BASE, 0x1000, self._apic_read, None, self._apic_write, None)
        self.apic_pages.add(L.APIC_BASE)

    def _call(self, name: str, *args: Any, default: Any = None) -> Any:
        v = self.cur
        assert v is not None
        return v.guarded(name, args, default)

    def _block(self, _h: Any, address: int, size: int, _ud: Any) -> None:
        """Every block start: the clock (a block counts when it starts; vCPU.settle takes back what did not
        run), the interrupt window, site discovery, the run's limit (csrc/vcpu_native.c block_enter's rules)."""
        v = self.cur
        assert v is not None
        if v.pend_valid:
            v.last_ran = (v.block_start, v.pend_end)
            if v.nmi_blocked:
                v.guarded("check_iret", (), None)
        end = address + size - 1
        v.block_start = address
        v.pend_end = end
        v.pend_valid = True
        if v.window_active and v.window_block(address):
            v.pend_valid = False
            return
        first, last = address & -4096, end & -4096
        scanned = self.scanned
        if (first not in scanned or (last != first and last not in scanned)) and (
                self._check_page(v, first) or (last != first and self._check_page(v, last))):
            v.pend_valid = False  # stopped before the block: hooks were added for its page
            return
        ticks = v.bytes
        if ticks >= v.limit or (v.exact_now and ticks + size > v.limit):  # the budget is used up (or an exact
            # run's would be passed by this block): stop before this block, which is not counted
            v.limit = MAX_ADDR
            if not v.stop_reason:
                v.stop_reason = "budget"
            v.pend_valid = False
            uclib.uc_emu_stop(self.h)
            return
        v.bytes = ticks + size
        v.blocks += 1

    def _check_page(self, v: Vcpu, page: int) -> bool:
        """A page's first block: search it for MSR/CR8/PAUSE sites and our hypercall stub; True when hooks
        were added (the engine stops before the block; its translations are dropped and redone with them)."""
        if page in self.scanned:
            return False
        data = v.read_virtual(page, 0x1001) or v.read_virtual(page, 0x1000)
        if data is None:
            return False  # not mapped now: the fetch faults; searched when it is mapped
        self.scanned.add(page)
        added = False
        for off, is_write in site_offsets(data):
            if page + off not in self.sites:
                self.sites[page + off] = is_write
                self._add(UC_HOOK_CODE, _BLOCK_CB(self._site), page + off, page + off)
                for nxt in (page + off + 2, page + off + 3):  # plain form, one prefix byte
                    self._add(UC_HOOK_CODE, _BLOCK_CB(self._msr_done), nxt, nxt)
                added = True
        for off, is_write, gpr in cr8_offsets(data):
            if page + off not in self.cr8_sites:
                self.cr8_sites[page + off] = (is_write, gpr)
                self._add(UC_HOOK_CODE, _BLOCK_CB(self._site), page + off, page + off)
                self._add(UC_HOOK_CODE, _BLOCK_CB(self._cr8_done), page + off + 4, page + off + 4)
                added = True
        for off in pause_offsets(data):
            if page + off not in self.pause_sites:
                self.pause_sites.add(page + off)
                self._add(UC_HOOK_CODE, _BLOCK_CB(self._pause), page + off, page + off)
                added = True
        if is_hypercall_stub(data) and page + HYPERCALL_HOOK_OFFSET not in self.stub_at:
            at = page + HYPERCALL_HOOK_OFFSET
            self.stub_at.add(at)
            self._add(UC_HOOK_CODE, _BLOCK_CB(lambda _h, a, _s, _u: self._call("stub_call", a)), at, at)
            added = True
        if added:
            self.uc.ctl_remove_cache(page, page + 0x1000)
            v.stop_reason = "sites"
            uclib.uc_emu_stop(self.h)
        return added

    def _site(self, _h: Any, address: int, _size: int, _ud: Any) -> None:
        v = self.cur
        assert v is not None
        v.site_reached(address)

    def _msr_done(self, _h: Any, address: int, _size: int, _ud: Any) -> None:
        v = self.cur
        assert v is not None
        if v.pending_site and address - v.pending_site in (2, 3):
            v.guarded("msr_done", (address,), None)

    def _cr8_done(self, _h: Any, address: int, _size: int, _ud: Any) -> None:
        v = self.cur
        assert v is not None
        if v.pending_site and address - v.pending_site == 4:
            v.guarded("cr8_done", (address,), None)

    def _pause(self, _h: Any, address: int, _size: int, _ud: Any) -> None:
        v = self.cur
        assert v is not None
        if v.read_virtual(address, 2) == b"\xf3\x90":  # a hook left on rewritten code does nothing
            v.pause_executed()

    def _unmapped(self, _h: Any, _t: int, address: int, _size: int, _value: int, _ud: Any) -> bool:
        """Unassigned guest-physical memory reads all-ones, writes are dropped (QEMU's PCI master abort; the fast
        engine's unassigned.py does the same): map the largest aligned free block around it as such I/O."""
        if address >= 1 << 40 or len(self.unassigned) >= 256:  # the engine CPU model's 40 physical bits
            return False
        regions = [(b, e) for b, e, _p in self.uc.mem_regions()]
        for size in (1 << 30, 1 << 21, 1 << 12):
            base = address & ~(size - 1)
            if base + size <= 1 << 40 and all(e < base or b >= base + size for b, e in regions):
                self.uc.mmio_map(base, size, _all_ones, None, _drop, None)
                self.unassigned.append((base, size))
                if self.cur is not None:
                    self.cur.stats.events["unassigned memory mapped"] += 1
                return True
        return False

    # -- xAPIC MMIO (every vCPU's page at its own base; the access is the running vCPU's) -----------------------
    def _apic_read(self, _uc: Any, offset: int, size: int, _ud: Any) -> int:
        assert self.cur is not None
        return int(self.cur.guarded("apic_read", (offset, size), 0))

    def _apic_write(self, _uc: Any, offset: int, size: int, value: int, _ud: Any) -> None:
        assert self.cur is not None
        self.cur.guarded("apic_write", (offset, size, value), None)

    def map_apic_page(self, base: int) -> bool:
        """Map an xAPIC page at ``base`` (once for the machine); False when something else is there."""
        if base in self.apic_pages:
            return True
        mapped = [(b, e) for b, e, _p in self.uc.mem_regions() if b <= base + 0xFFF and e >= base]
        try:
            if mapped and base >= self.m.ram_size:  # an unassigned page there: the APIC wins (QEMU)
                self.uc.mem_unmap(base, 0x1000)
            self.uc.mmio_map(base, 0x1000, self._apic_read, None, self._apic_write, None)
        except UcError:
            return False
        self.apic_pages.add(base)
        return True

    def map_mmio(self, v: Vcpu, base: int, size: int, read: Any, write: Any) -> None:
        """A device region, mapped once for the machine; each access goes to the handlers the running vCPU
        registered (they account the exit to it)."""
        handlers = self.devices.get(base)
        if handlers is None:
            handlers = self.devices[base] = {}
            self.uc.mmio_map(base, size, lambda _uc, off, sz, _ud: self._device(handlers, 0)(off, sz), None,
                             lambda _uc, off, sz, val, _ud: self._device(handlers, 1)(off, sz, val), None)
        handlers[v.index] = (read, write)

    def _device(self, handlers: dict[int, tuple[Any, Any]], which: int) -> Any:
        assert self.cur is not None
        return handlers[self.cur.index][which]

    # -- switching vCPUs ------------------------------------------------------------------------------------------
    def new_context(self) -> Any:
        """A saved context of a fresh CPU (the clean one), the loaded vCPU's registers left as they are."""
        if self.cur is not None:
            self.uc.context_update(self.cur.ctx)
        self.uc.context_restore(self.clean)
        ctx = self.uc.context_save()
        if self.cur is not None:
            self.uc.context_restore(self.cur.ctx)
        return ctx

    def load(self, v: Vcpu) -> None:
        """Make the instance hold ``v``'s registers (saving the previous vCPU's)."""
        if self.cur is v:
            return
        if self.cur is not None:
            self.uc.context_update(self.cur.ctx)
            self.cur.loaded = False
        self.uc.context_restore(v.ctx)
        self.uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)  # the TLB belongs to the previous vCPU's CR3
        self.cur, v.loaded = v, True

    def release(self, v: Vcpu) -> None:
        """``v`` is closed (Machine.close): once none is left, the instance and its hooks are dropped."""
        if self.cur is v:
            self.uc.context_update(v.ctx)
            self.cur, v.loaded = None, False
        self.closed.add(v.index)
        if len(self.closed) >= self.m.vcpu_count:
            _ENGINES.pop(self.m, None)
            self._keep.clear()

    def flush_tlb(self) -> None:
        self.uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)

    def forget(self, page: int | None) -> None:
        """Guest code changed under the engine (written by the host, e.g. an overlay page): drop translations and
        search again before it runs."""
        if page is None:
            self.scanned.clear()
            self.uc.ctl_flush_tb()
        else:
            self.scanned.discard(page & ~0xFFF)
            self.uc.ctl_remove_cache(page & ~0xFFF, (page & ~0xFFF) + 0x1000)

    def set_protected(self, pages: set[int]) -> None:
        """Read-only overlays (TLFS §3.13): mapped read+execute; a store stops the engine (UC_HOOK_MEM_WRITE_PROT)."""
        if pages == self.protected:
            return
        for page in self.protected - pages:
            self.uc.mem_protect(page, 0x1000, UC_PROT_ALL)
        for page in pages - self.protected:
            if page + 0x1000 <= self.m.ram_size:
                self.uc.mem_protect(page, 0x1000, UC_PROT_READ | UC_PROT_EXEC)
        self.protected = set(pages)
        self.flush_tlb()
        self.map_changed = True  # measured on the fast engine: a map change inside a hook ends emu_start


def _all_ones(_uc: Any, _offset: int, size: int, _ud: Any) -> int:
    return (1 << (8 * size)) - 1


def _drop(_uc: Any, _offset: int, _size: int, _value: int, _ud: Any) -> None:
    return None
