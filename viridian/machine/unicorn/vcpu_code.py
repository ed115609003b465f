"""Code on one vCPU (engine side): MSR/CR8/PAUSE/hypercall-stub sites found on pages about to run (hooked
before the page executes), translation-cache coherence (stores into executed pages, caught natively by
vn_write, make every vCPU forget the page). Functions of a :class:`~viridian.machine.unicorn.vcpu.Vcpu` (its
methods delegate)."""

from __future__ import annotations

import ctypes
import logging
import weakref
from typing import TYPE_CHECKING, Any

from unicorn import (
    UC_HOOK_BLOCK,
    UC_HOOK_CODE,
    UC_HOOK_MEM_WRITE,
    UC_PROT_ALL,
    UC_PROT_EXEC,
    UC_PROT_READ,
    UC_PROT_WRITE,
)

from viridian.errors import UserError
from viridian.machine.stubs import (
    HYPERCALL_HOOK_OFFSET,
    cr8_offsets,
    is_hypercall_stub,
    pause_offsets,
    site_offsets,
)
from viridian.machine.unicorn import engine as E
from viridian.machine.unicorn import engine_build, store_watch
from viridian.machine.unicorn.native import function_address

if TYPE_CHECKING:
    from viridian.machine.unicorn.vcpu import Vcpu

log = logging.getLogger("viridian.machine.unicorn.vcpu")


def hook_page(v: Vcpu, page: int, full: bool = False) -> None:
    """A page about to run holds 0F 30 / 0F 32 (or our hypercall stub): hook its sites first."""
    if full:
        log.warning("vCPU %d: scanned-page table full; clearing it", v.index)
        v.lib.vn_clear(ctypes.byref(v.native))
        v.lib.vn_insert(ctypes.byref(v.native), page)
    data = v.read_virtual(page, 0x1001) or v.read_virtual(page, 0x1000)
    if data is None:
        return
    if page not in v.hooked_pages:
        v.hooked_pages.add(page)
        for off, is_write in site_offsets(data):
            add_site(v, page + off, is_write)
        for off, is_write, gpr in cr8_offsets(data):
            add_cr8_site(v, page + off, is_write, gpr)
        for off in ([] if v.native.pause_native else pause_offsets(data)):  # else vn_svm_check sees PAUSE
            if page + off in v.pause_sites:
                continue  # a rescanned page keeps its hooks (a second one would count the PAUSE twice)
            v.pause_sites.add(page + off)
            E.hook_add_native(v.uc, UC_HOOK_CODE, v.pause_fn, ctypes.addressof(v.native),
                              page + off, page + off)
    if is_hypercall_stub(data) and page not in v.stub_hooks:
        v.stub_hooks.add(page)
        at = page + HYPERCALL_HOOK_OFFSET
        if v.native.stub_count < 8:
            v.native.stub_at[v.native.stub_count] = at
        v.native.stub_count += 1
        E.hook_add_native(v.uc, UC_HOOK_CODE, v.stub_fn, ctypes.addressof(v.native), at, at)
        v.uc.hook_add(UC_HOOK_CODE, v.guard(v.traps.on_stub_call), None,
                         page + HYPERCALL_HOOK_OFFSET, page + HYPERCALL_HOOK_OFFSET)
    v.uc.ctl_remove_cache(page, page + 0x1000)


def add_site(v: Vcpu, addr: int, is_write: bool) -> None:
    if addr in v.sites:
        return
    v.sites[addr] = int(is_write)
    E.hook_add_native(v.uc, UC_HOOK_CODE, v.site_fn, ctypes.addressof(v.native), addr, addr)
    for nxt in (addr + 2, addr + 3):  # plain form, and the same site seen with one prefix byte
        E.hook_add_native(v.uc, UC_HOOK_CODE, v.msr_done_fn, ctypes.addressof(v.native), nxt, nxt)


def add_cr8_site(v: Vcpu, addr: int, is_write: bool, gpr: int) -> None:
    if addr in v.cr8_sites:
        return
    v.cr8_sites[addr] = (is_write, E.GPRS[gpr])
    E.hook_add_native(v.uc, UC_HOOK_CODE, v.site_fn, ctypes.addressof(v.native), addr, addr)
    v.keep_alive.append(E.hook_code_raw(v.uc, v.cr8_done_hook, addr + 4, addr + 4)[1])


def forget_code(v: Vcpu, page: int | None = None, drop_cache: bool = True) -> None:
    """Guest-visible code changed (the hypercall page was written, another vCPU stored to a code page):
    rescan for MSR sites on next execution and drop stale translations."""
    if page is None:
        v.lib.vn_clear(ctypes.byref(v.native))
        v.hooked_pages.clear()
        v.uc.ctl_flush_tb()
        return
    v.lib.vn_remove(ctypes.byref(v.native), page)
    v.hooked_pages.discard(page)
    if drop_cache:
        v.uc.ctl_remove_cache(page, page + 0x1000)


def note_new_code(v: Vcpu) -> list[int]:
    """Pages that started executing here since the last call (vn_block scanned them and marked their
    physical pages in the machine's code map): remember which virtual pages each physical page ran at;
    returns those physical pages."""
    n = v.native
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
    n = v.native
    count = int(n.dirty_count)
    n.dirty_count = 0
    if count > 64:
        return None
    return sorted({int(p) for p in n.dirty_code[:count]})


def watch_stores(v: Vcpu, lib: Any) -> None:
    """Wire the coherence hooks (store_watch.py): the machine's shared code map, then either the engine's
    store path (vn_tbipf, registered under this engine's handle) or, failing that, the native write hook."""
    n, m = v.native, v.m
    n.code_map = ctypes.cast(m.engine_state.code_map, ctypes.POINTER(ctypes.c_uint64))
    n.defer_map = ctypes.cast(m.engine_state.code_defer, ctypes.POINTER(ctypes.c_uint64))
    n.code_map_pages, n.vmem_translate = m.ram_size >> 12, E.c_function("uc_vmem_translate")
    n.host_ram = ctypes.addressof(m.ram_buffer)  # the hooks' page walk reads guest RAM here
    n.uc = v.uc._uch.value
    if engine_build.enabled("store_watch") and store_watch.install(lib):
        store_watch.use_code_filter(lib, engine_build.enabled("code_filter"))
        n.tb_map = ctypes.cast(m.engine_state.tb_map, ctypes.POINTER(ctypes.c_uint64))
        n.pause_native = 1
        refresh_ram_ranges(v)
        if lib.vn_register(v.uc._uch, ctypes.byref(n)) != 0:
            raise UserError("too many vCPU engines in one process for the store watch")
        vars(v)["_vn_unregister"] = weakref.finalize(v, lib.vn_unregister, v.uc._uch)  # teardown.py runs it
        quiet = store_watch.quiet_loads_enabled()
        lib.vn_enable_quiet_loads(int(quiet))
        lib.vn_enable_quiet_stores(int(quiet and store_watch.precise_write_protect()))
        n.wp_map = ctypes.cast(m.engine_state.wp_map, ctypes.POINTER(ctypes.c_uint64))
        if store_watch.TB_ENTRY is not None and store_watch.tb_entry_enabled():
            cpu_off, exit_off = store_watch.TB_ENTRY
            cpu = ctypes.c_void_p.from_address(v.uc._uch.value + cpu_off).value
            if cpu:  # blocks start in vn_tb_enter (csrc/block_entry.c): no block hook
                n.cpu, n.exit_request, n.tb_patch = cpu, cpu + exit_off, 1
    else:  # the engine's own paths (none of engine_watch.c's redirects acts for this engine)
        if store_watch._installed:  # installed for the process, forced off here (engine_build.disabled)
            lib.vn_enable_quiet_loads(0)
            lib.vn_enable_quiet_stores(0)
            store_watch.use_code_filter(lib, False)
        E.hook_add_native(v.uc, UC_HOOK_MEM_WRITE, function_address(lib, "vn_write"), ctypes.addressof(n), 0,
                          m.ram_size - 1)


PATCH_FAILURES = {1: "no block", 2: "pc differs", 3: "layout differs", 4: "unexpected entry code",
                  5: "call target outside the block", 6: "call to something else", 7: "no entry stub in reach",
                  8: "vCPU state out of the block's reach"}


def hook_blocks(v: Vcpu) -> None:
    """Count blocks with the native block hook (vn_block): without the engine watch's block entry, or after a
    translation it could not patch (then every translation is dropped, so none is counted twice)."""
    n = v.native
    if n.tb_patch_failed:
        why = PATCH_FAILURES.get(int(n.tb_patch_failed), str(int(n.tb_patch_failed)))
        log.warning("vCPU %d: a translation block could not be patched (%s); counting blocks with the block hook",
                    v.index, why)
        v.stats.events["tb_patch_failed"] += 1
        n.tb_patch_failed = 0
        v.uc.ctl_flush_tb()
    if not v.block_hooked:
        v.block_hooked = True
        E.hook_add_native(v.uc, UC_HOOK_BLOCK, function_address(v.lib, "vn_block"), ctypes.addressof(n), 1, 0)


def set_protected(v: Vcpu, pages: set[int]) -> None:
    """Make exactly ``pages`` read-only to the guest (TLFS §3.13), the rest of RAM writable: through the machine's
    write-protect map (csrc vn_tbipf stops a store there at the storing instruction; the pages stay one RAM
    block) or, where that is not available, by mapping them read+execute (Unicorn's write-protect hook)."""
    newly = pages - v.protected
    if store_watch.precise_write_protect() and v.native.wp_map:
        wp = v.m.engine_state.wp_map
        for page in v.protected - pages:
            if page < v.m.ram_size:
                wp[page >> 18] &= ~(1 << ((page >> 12) & 63))
        for page in pages:
            if page < v.m.ram_size:
                wp[page >> 18] |= 1 << ((page >> 12) & 63)
        if v.m.running is v and pages != v.protected:  # as the fallback's mem_protect: the next instruction
            v.stop()  # is fetched through a fresh walk (a page table under a new overlay reads its bytes at once)
    else:
        for page in v.protected - pages:
            v.uc.mem_protect(page, 0x1000, UC_PROT_ALL)
        for page in newly:
            v.uc.mem_protect(page, 0x1000, UC_PROT_READ | UC_PROT_EXEC)
        refresh_ram_ranges(v)
        if v.m.running is v:  # measured: mem_protect inside a hook makes emu_start return there
            v.map_changed = True
    v.protected = set(pages)
    if newly:
        v.flush_tlb()  # a fast (unwatched) TLB entry must not outlive write access


def refresh_ram_ranges(v: Vcpu) -> None:
    """Tell the store watch (csrc vn_tbipf) which engine RAM offsets hold which guest-physical pages (the
    engine gives every region of RAM its own block; protecting a page splits one)."""
    n, base = v.native, ctypes.addressof(v.m.ram_buffer)
    regions = [(b, e, p) for b, e, p in v.uc.mem_regions() if e < v.m.ram_size]
    if len(regions) > 16:
        log.warning("vCPU %d: %d RAM regions; stores beyond the 16th are not watched", v.index, len(regions))
    for i, (begin, end, perms) in enumerate(regions[:16]):
        r = n.ram_ranges[i]
        r[0], r[1], r[2] = E.ram_addr_from_host(v.uc, base + begin), end + 1 - begin, begin
        r[3] = int(bool(perms & UC_PROT_WRITE))
    n.ram_count = min(len(regions), 16)
