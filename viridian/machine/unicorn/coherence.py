"""The fast engine's state shared by all the vCPUs of one machine: code coherence across their translation
caches (each Uc has its own and sees only its own stores to code; ENGINE_NOTES.md) and the bitmaps the compiled
hooks read (csrc: vn_write, vn_tbipf, vn_tlb_set_page). Built per machine through engines.py; the core calls
:meth:`SharedState.sync_code` after every slice (Machine.run_vcpu) and the run loop after a store into code.
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from viridian.machine.backend import VcpuBackend
    from viridian.machine.machine import Machine


class SharedState:
    """A bit per physical page, machine-wide: executed (code_map), written since it ran (code_defer), ever
    translated (tb_map: never fast stores), read-only overlay (wp_map: TLFS §3.13, vn_tbipf)."""

    def __init__(self, m: Machine) -> None:
        self.m = m
        words = (m.ram_size >> 12) // 64 + 1
        self.code_map: Any = (ctypes.c_uint64 * words)()
        self.code_defer: Any = (ctypes.c_uint64 * words)()  # written since run: rewatch later
        self.tb_map: Any = (ctypes.c_uint64 * words)()
        self.wp_map: Any = (ctypes.c_uint64 * words)()

    def sync_code(self, v: VcpuBackend, slice_end: bool = True) -> None:
        """Every store into a physical page some vCPU executed stops the writer (vn_write in
        csrc/vcpu_native.c); the page is then dropped from the other vCPUs' caches and rescanned for MSR
        sites everywhere before it runs again. A page written after it ran is watched again only at the end
        of the slice it runs again in, so a page mixing code and hot data stops its writer once a slice."""
        vcpus = self.m.vcpus
        fresh = v.note_new_code()
        if slice_end:
            for pa in fresh:
                self._code_bit(pa, watch=True)
        dirty = v.drain_dirty_code()
        if dirty is None:  # more than the ring holds: drop everything
            for o in vcpus:
                o.forget_code()
            return
        for pa in dirty:
            if not slice_end:
                self._code_bit(pa, watch=False)
            for o in vcpus:
                o.forget_physical(pa, drop_cache=o is not v)

    def _code_bit(self, pa: int, watch: bool) -> None:
        word, bit = pa >> 18, 1 << ((pa >> 12) & 63)
        if watch:
            self.code_map[word] |= bit
            self.code_defer[word] &= ~bit
        else:
            self.code_defer[word] |= bit
