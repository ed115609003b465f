"""Code on one vCPU (engine side): MSR/CR8/PAUSE/hypercall-stub sites found on pages about to run (hooked
before the page executes), translation-cache coherence (stores into executed pages, caught natively by
vn_write, make every vCPU forget the page). Functions of a :class:`~viridian.machine.vcpu.Vcpu` (its
methods delegate)."""

from __future__ import annotations

import ctypes
import logging
from typing import TYPE_CHECKING

from unicorn import UC_HOOK_CODE

from viridian.machine import engine as E
from viridian.machine.stubs import (
    HYPERCALL_HOOK_OFFSET,
    cr8_offsets,
    is_hypercall_stub,
    pause_offsets,
    site_offsets,
)

if TYPE_CHECKING:
    from viridian.machine.vcpu import Vcpu

log = logging.getLogger("viridian.machine.vcpu")


def hook_page(v: Vcpu, page: int, full: bool = False) -> None:
    """A page about to run holds 0F 30 / 0F 32 (or our hypercall stub): hook its sites first."""
    if full:
        log.warning("vCPU %d: scanned-page table full; clearing it", v.index)
        v._lib.vn_clear(ctypes.byref(v._native))
        v._lib.vn_insert(ctypes.byref(v._native), page)
    data = v._read_virt(page, 0x1001) or v._read_virt(page, 0x1000)
    if data is None:
        return
    if page not in v._hooked_pages:
        v._hooked_pages.add(page)
        for off, is_write in site_offsets(data):
            add_site(v, page + off, is_write)
        for off, is_write, gpr in cr8_offsets(data):
            add_cr8_site(v, page + off, is_write, gpr)
        for off in pause_offsets(data):
            E.hook_add_native(v.uc, UC_HOOK_CODE, v._pause_fn, ctypes.addressof(v._native),
                              page + off, page + off)
    if is_hypercall_stub(data) and page not in v._stub_hooks:
        v._stub_hooks.add(page)
        at = page + HYPERCALL_HOOK_OFFSET
        if v._native.stub_count < 8:
            v._native.stub_at[v._native.stub_count] = at
        v._native.stub_count += 1
        E.hook_add_native(v.uc, UC_HOOK_CODE, v._stub_fn, ctypes.addressof(v._native), at, at)
        v.uc.hook_add(UC_HOOK_CODE, v._guard(v.traps._stub_call), None,
                         page + HYPERCALL_HOOK_OFFSET, page + HYPERCALL_HOOK_OFFSET)
    v.uc.ctl_remove_cache(page, page + 0x1000)


def add_site(v: Vcpu, addr: int, is_write: bool) -> None:
    if addr in v.sites:
        return
    v.sites[addr] = int(is_write)
    E.hook_add_native(v.uc, UC_HOOK_CODE, v._site_fn, ctypes.addressof(v._native), addr, addr)
    for nxt in (addr + 2, addr + 3):  # plain form, and the same site seen with one prefix byte
        v._keep.append(E.hook_code_raw(v.uc, v._msr_done_hook, nxt, nxt)[1])


def add_cr8_site(v: Vcpu, addr: int, is_write: bool, gpr: int) -> None:
    if addr in v.cr8_sites:
        return
    from viridian.machine.vcpu import GPRS

    v.cr8_sites[addr] = (is_write, GPRS[gpr])
    E.hook_add_native(v.uc, UC_HOOK_CODE, v._site_fn, ctypes.addressof(v._native), addr, addr)
    v._keep.append(E.hook_code_raw(v.uc, v._cr8_done_hook, addr + 4, addr + 4)[1])


def forget_code(v: Vcpu, page: int | None = None, drop_cache: bool = True) -> None:
    """Guest-visible code changed (the hypercall page was written, another vCPU stored to a code page):
    rescan for MSR sites on next execution and drop stale translations."""
    if page is None:
        v._lib.vn_clear(ctypes.byref(v._native))
        v._hooked_pages.clear()
        v.uc.ctl_flush_tb()
        return
    v._lib.vn_remove(ctypes.byref(v._native), page)
    v._hooked_pages.discard(page)
    if drop_cache:
        v.uc.ctl_remove_cache(page, page + 0x1000)


def note_new_code(v: Vcpu) -> list[int]:
    """Pages that started executing here since the last call (vn_block scanned them and marked their
    physical pages in the machine's code map): remember which virtual pages each physical page ran at;
    returns those physical pages."""
    n = v._native
    count = int(n.new_code_count)
    n.new_code_count = 0
    if count > 1024:  # the ring overflowed: pages ran that we cannot name; rescan everything here
        forget_code(v)
        v.code_vas.clear()
        return []
    out = []
    for va, pa in zip(n.new_code[:count], n.new_code_pa[:count], strict=True):
        if pa < v.m.ram_size:
            v.code_vas.setdefault(int(pa), set()).add(int(va))
            out.append(int(pa))
    return out


def forget_physical(v: Vcpu, pa: int, drop_cache: bool) -> None:
    """Code at physical page ``pa`` was written: forget every virtual page it ran at on this vCPU (rescanned
    for sites when it runs next) and, unless this vCPU wrote it (the engine already invalidated its own
    translations), drop their translations."""
    for va in v.code_vas.pop(pa, ()):
        forget_code(v, va, drop_cache)


def drain_dirty_code(v: Vcpu) -> list[int] | None:
    """Physical code pages this vCPU wrote since the last drain (None: more than the ring holds)."""
    n = v._native
    count = int(n.dirty_count)
    n.dirty_count = 0
    if count > 64:
        return None
    return sorted({int(p) for p in n.dirty_code[:count]})
