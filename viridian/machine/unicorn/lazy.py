"""A vCPU's engine is built on first use (issue 19 item 5: engines and RAM mappings created lazily).

Building a Unicorn instance costs ~2.8 MiB and several ms (its own start-up; the RAM mapping is the call that
triggers it), so a vCPU gets one only when something needs it: its first run (an AP at its SIPI, or at entry),
a register read, a snapshot. An AP a kernel never starts never gets one.

Correct by construction: any attribute of the engine part (``uc``, the native state, register batches, the
overlay pages...) that is missing triggers :meth:`LazyEngine.__getattr__`, which builds the engine first. The
calls the core makes on *every* vCPU (code coherence, TLB flushes, overlay pages, the fast-spin flag, clocks)
check :func:`unbuilt` instead, so a parked AP stays cheap: nothing to forget or flush, and the overlay pages and
fast-spin flag are remembered (:func:`defer`) and applied when the engine is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any


def unbuilt(v: Any) -> bool:
    """``v`` has no engine yet (it is built on first use)."""
    d = v.__dict__
    return "uc" not in d and "_boot" in d


def defer(v: Any, what: str, value: Any) -> None:
    """Remember a setting for when ``v``'s engine is built (``protected`` pages, ``fast_spin``)."""
    v.__dict__.setdefault("_deferred", {})[what] = value


class LazyEngine:
    """Mixin of the Unicorn vCPU: ``build_engine()`` runs on the first access to an attribute it creates."""

    if not TYPE_CHECKING:  # (hidden from mypy: every attribute would type as Any)

        def __getattr__(self, name: str) -> Any:
            d = self.__dict__
            if name.startswith("__") or not unbuilt(self) or d.get("_building") or d.get("_closed"):
                raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
            d["_building"] = True
            try:
                self.build_engine()
            finally:
                d["_building"] = False
            deferred = d.pop("_deferred", {})
            if "protected" in deferred:
                self.set_protected(deferred["protected"])
            if "fast_spin" in deferred:
                self.set_fast_spin(deferred["fast_spin"])
            return getattr(self, name)


# -- the boot state, without reading guest tables at build time -------------------------------------------------
# Loading CS/DS through Unicorn's register API reads the descriptors from the guest's GDT through the guest's
# page tables, outside any run: a fault there (the guest rewrote the tables before this engine was built) ends
# in a longjmp with no landing pad -- a host crash. So the descriptors are captured when the vCPU is constructed
# (when an eager build would have loaded them) and loaded at build time from private scratch pages mapped
# before RAM, through scratch page tables; the eager loads' writes to RAM happen at construction instead.
_A, _D, _PS = 1 << 5, 1 << 6, 1 << 7  # SDM vol. 3 §4.5: accessed, dirty, page size
_ADDR = 0x000F_FFFF_FFFF_F000
_DESC_A = 1 << 40  # SDM vol. 3 §3.4.5: a segment descriptor's accessed bit


def _walk(ram: memoryview, cr3: int, linear: int) -> tuple[list[int], int] | None:
    """4-level walk (SDM vol. 3 §4.5) of ``linear``: (addresses of the entries used, physical) or None."""
    table, entries = cr3 & _ADDR, []
    for level, shift in enumerate((39, 30, 21, 12)):
        at = table + ((linear >> shift) & 511) * 8
        if at + 8 > len(ram):
            return None
        e = int.from_bytes(ram[at : at + 8], "little")
        if not e & 1:
            return None
        entries.append(at)
        if level == 3 or (level > 0 and e & _PS):
            size = 1 << shift
            return entries, (e & _ADDR & ~(size - 1)) | (linear & (size - 1))
        table = e & _ADDR
    return None  # pragma: no cover - the loop always returns


def _set_bits(ram: memoryview, at: int, bits: int) -> None:
    value = int.from_bytes(ram[at : at + 8], "little")
    ram[at : at + 8] = (value | bits).to_bytes(8, "little")


def capture_boot(ram: memoryview, boot: Any, cr3: int) -> dict[int, bytes]:
    """At construction: the CS and DS descriptors the boot loads read (linear address -> 8 bytes), after the
    writes those loads make (measured on the pinned Unicorn: A on every entry of the walk, the data descriptor's
    A bit, and so D on the walk's leaf -- SDM vol. 3 §4.8; CS's load sets no A bit there)."""
    descs: dict[int, bytes] = {}
    for sel, data in ((boot.cs, False), (boot.ds, True)):
        linear = boot.gdt + (sel & ~7)
        walk = _walk(ram, cr3, linear)
        if walk is None or walk[1] + 8 > len(ram):
            continue  # not the loader's tables: the scratch load reads a null descriptor (UcError, no crash)
        entries, phys = walk
        for at in entries:
            _set_bits(ram, at, _A)
        if data and not int.from_bytes(ram[phys : phys + 8], "little") & _DESC_A:
            _set_bits(ram, phys, _DESC_A)
            _set_bits(ram, entries[-1], _D)
        descs[linear] = bytes(ram[phys : phys + 8])
    return descs


def scratch_tables(descs: dict[int, bytes]) -> tuple[bytearray, int]:
    """Page tables (from physical 0) mapping each descriptor's linear page to a page holding it: (image, CR3).

    Linear page 0 is mapped too (to the PML4's frame, read-only use): unmapping the scratch pages translates
    their start as a code address (Unicorn's uc_invalidate_tb); a failed walk would stay recorded as a #PF."""
    image = bytearray(0x1000)  # the PML4
    tables: dict[tuple[int, int], int] = {}

    def entry(table: int, index: int, target: int) -> None:
        image[table + index * 8 : table + index * 8 + 8] = (target | 0x63).to_bytes(8, "little")  # P RW A D

    def page(addr: int, data: bool) -> int:
        table = 0
        for level, shift in enumerate((39, 30, 21, 12)):
            key = (level, addr >> shift)
            if key not in tables:
                tables[key] = 0 if level == 3 and not data else len(image)
                if tables[key]:
                    image.extend(bytes(0x1000))
                entry(table, (addr >> shift) & 511, tables[key])
            table = tables[key]
        return table

    for linear, desc in sorted(descs.items()):
        for part in range(8):  # a descriptor may straddle two pages
            image[page(linear + part, True) + ((linear + part) & 0xFFF)] = desc[part]
    page(0, False)
    return image, 0


def load_boot_state(uc: Any, boot: Any, descs: dict[int, bytes], write: Any) -> None:
    """Build time, before RAM is mapped: ``write(uc, boot, cr3)`` (the boot register writes) against the
    scratch tables, then CR3 back to the loader's (a full TLB flush) and the scratch pages unmapped."""
    from viridian.machine import layout as L

    image, cr3 = scratch_tables(descs)
    uc.mem_map(0, len(image))
    try:
        uc.mem_write(0, bytes(image))
        write(uc, boot, cr3)
        from unicorn import x86_const as X

        uc.reg_write(X.UC_X86_REG_CR3, L.PML4)
    finally:
        uc.mem_unmap(0, len(image))
