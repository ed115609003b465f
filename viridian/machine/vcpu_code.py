"""Code on one vCPU (engine side): MSR/CR8/PAUSE/hypercall-stub sites found on pages about to run (hooked
before the page executes), translation-cache coherence (write watches on executed pages, forgetting pages
that changed). Functions of a :class:`~viridian.machine.vcpu.Vcpu` (its methods delegate)."""

from __future__ import annotations

import ctypes
import logging
from typing import TYPE_CHECKING

from unicorn import UC_HOOK_CODE, UC_PROT_ALL, UC_PROT_EXEC, UC_PROT_READ

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


def watch_code_pages(v: Vcpu, pages: list[int]) -> None:
    """Catch stores into the code pages at virtual ``pages``: their physical pages are mapped read+execute in
    this vCPU's engine, and a store raises UC_HOOK_MEM_WRITE_PROT (:func:`code_page`). A write hook would put
    every store of the guest on Unicorn's slow path; protection costs nothing until code is written, and it
    catches every alias of the page (Linux patches text through other mappings). Contiguous physical pages
    are protected with one call (each call costs milliseconds in the engine)."""
    cr3, cr0 = v._paging()
    fresh: list[int] = []
    for page in pages:
        pa = v.m.walker.translate(cr3, cr0, page)
        if pa is None:
            continue
        pa &= ~0xFFF
        if pa in v.protected or pa >= v.m.ram_size:
            continue
        vas = v.code_protected.get(pa)
        if vas is None:
            v.code_protected[pa] = {page}
            fresh.append(pa)
        else:
            vas.add(page)
    fresh.sort()
    i = 0
    while i < len(fresh):
        j = i
        while j + 1 < len(fresh) and fresh[j + 1] == fresh[j] + 0x1000:
            j += 1
        v.uc.mem_protect(fresh[i], fresh[j] - fresh[i] + 0x1000, UC_PROT_READ | UC_PROT_EXEC)
        i = j + 1


def code_page(v: Vcpu, address: int, size: int = 1) -> int | None:
    """The protected code page a faulting store hit (None: not ours, e.g. an overlay page: #GP). Measured:
    Unicorn 2.1.4 reports the *physical* address to UC_HOOK_MEM_WRITE_PROT (a Linux kernel store through its
    direct map showed it); a store crossing a page boundary may fault on its second page."""
    for pa in (address & ~0xFFF, (address + max(1, size) - 1) & ~0xFFF):
        if pa not in v.protected and pa in v.code_protected:
            return pa
    return None


def code_fault_done(v: Vcpu, pa: int) -> None:
    """After the engine stopped at a store into protected code: the page's virtual pages are dirty (the
    machine drops them from every vCPU's cache), this vCPU may write it freely until it runs again."""
    v.dirty_pages.update(v.code_protected.pop(pa, set()))
    v.uc.mem_protect(pa, 0x1000, UC_PROT_ALL)


def drain_new_code(v: Vcpu) -> list[int]:
    n = v._native
    count = int(n.new_code_count)
    n.new_code_count = 0
    return [int(p) for p in n.new_code[: min(count, 1024)]]


def drain_dirty_code(v: Vcpu) -> list[int] | None:
    out = sorted(v.dirty_pages)
    v.dirty_pages.clear()
    return out
