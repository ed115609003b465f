"""The fast engine's side of the seam: the :class:`~viridian.machine.backend.VcpuBackend` methods the core
calls (registers by name, snapshots, the clock counters, device MMIO, disassembly, the scheduler's questions,
run limits, TLB/protection/code coherence), mixed into :class:`~viridian.machine.unicorn.vcpu.Vcpu`.

The engine itself -- construction, the run loop, the hooks -- is vcpu.py and its vcpu_*.py helpers; the machine
core reaches a vCPU only through the protocol (viridian/machine/backend.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import cache
from typing import TYPE_CHECKING, Any, cast

from unicorn import UcError
from unicorn import x86_const as X
from unicorn.unicorn_const import UC_CTL_IO_WRITE, UC_CTL_TLB_FLUSH

from viridian.machine.backend import CLOCK_FIELDS, MmioRead, MmioWrite
from viridian.machine.ready import own_deadline
from viridian.machine.unicorn import engine as E
from viridian.machine.unicorn import snapshot_cpu
from viridian.machine.unicorn import vcpu_code as C
from viridian.machine.unicorn import vcpu_delivery as D
from viridian.machine.unicorn.lazy import defer, unbuilt

if TYPE_CHECKING:
    from viridian.devices.lapic import LocalApic
    from viridian.machine.machine import Machine
    from viridian.machine.stats import VcpuStats
    from viridian.machine.unicorn.native import VnState
    from viridian.machine.unicorn.vcpu import Vcpu
    from viridian.machine.unicorn.vcpu_traps import InstructionTraps

MASK64 = (1 << 64) - 1


@cache
def register_id(name: str) -> int:
    """Unicorn's register constant for an x86 register name (``"rip"``, ``"cr3"``...)."""
    rid = getattr(X, f"UC_X86_REG_{name.upper()}", None)
    if not isinstance(rid, int):
        raise KeyError(f"no register {name!r}")
    return rid


def _v(obj: SeamMethods) -> Vcpu:
    return cast("Vcpu", obj)


class SeamMethods:
    """Mixed into :class:`~viridian.machine.unicorn.vcpu.Vcpu` (which sets these attributes)."""

    m: Machine
    index: int
    uc: Any
    native: VnState
    apic: LocalApic
    efer: int
    stats: VcpuStats
    traps: InstructionTraps
    apic_page: int | None
    map_changed: bool
    run_end: int
    deadline_cut: bool | None = False  # this run ended at its own timer deadline (clip); None: kicked (host.py)
    rip_flags: Any
    halted: bool
    idle: bool
    wait_sipi: bool
    sipi_vector: int | None
    nmi_pending: bool

    def read_registers(self, names: Iterable[str]) -> tuple[int, ...]:
        ids = [register_id(n) for n in names]
        return tuple(int(x) for x in self.uc.reg_read_batch(ids))

    def read_msr(self, index: int) -> int:
        return int(self.uc.msr_read(index))

    def read_virtual(self, vaddr: int, length: int) -> bytes | None:
        cr0, cr3 = self.uc.reg_read_batch((X.UC_X86_REG_CR0, X.UC_X86_REG_CR3))
        return self.m.walker.read(int(cr3), int(cr0), vaddr, length)

    def describe_instruction(self, rip: int) -> str:
        data = self.read_virtual(rip, 16) or b""
        try:
            import capstone

            md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
            for insn in md.disasm(data, rip):
                return f"{insn.address:#x}: {insn.mnemonic} {insn.op_str}".strip()
        except ImportError:  # pragma: no cover - capstone is a dependency
            pass
        return f"{rip:#x}: " + (data[:8].hex(" ") if data else "<not mapped>")

    # -- snapshots -------------------------------------------------------------------------------------------
    def save_cpu(self) -> dict[str, Any]:
        snapshot_cpu.check_code_segment(self)  # type: ignore[arg-type]
        return snapshot_cpu.save_cpu(self.uc)

    def load_cpu(self, saved: Any) -> None:
        snapshot_cpu.load_cpu(self, saved)  # type: ignore[arg-type]

    def clock_state(self) -> dict[str, int]:
        return {k: int(getattr(self.native, k)) for k in CLOCK_FIELDS}

    def set_clock_state(self, counters: Mapping[str, int]) -> None:
        for k in CLOCK_FIELDS:
            setattr(self.native, k, counters[k])

    def resync(self) -> None:
        self.native.tsc_offset = self.apic.tsc_offset & MASK64
        self.efer = int(self.uc.msr_read(E.EFER))

    # -- fast paths and devices ------------------------------------------------------------------------------
    def set_fast_spin(self, ok: bool) -> None:
        if unbuilt(self):
            return defer(self, "fast_spin", ok)  # applied when the engine is built (lazy.py)
        self.native.fast_spin_ok = int(ok)

    def recheck_at_next_block(self) -> None:
        n = self.native
        n.limit = min(int(n.limit), int(n.bytes))  # the engine leaves at the next block start

    def map_mmio(self, base: int, size: int, read: MmioRead, write: MmioWrite) -> None:
        def on_read(uc: Any, offset: int, sz: int, _ud: Any) -> int:
            return read(offset, sz)

        def on_write(uc: Any, offset: int, sz: int, value: int, _ud: Any) -> None:
            write(offset, sz, value)

        self.uc.mmio_map(base, size, self.guard(on_read, 0), None, self.guard(on_write), None)

    def guard(self, fn: Any, default: Any = None) -> Any:  # pragma: no cover - Vcpu.guard
        raise NotImplementedError

    # -- the scheduler's questions, run limits, memory and code (vcpu_delivery.py, vcpu_code.py) -----------
    def paging(self) -> tuple[int, int]:
        """(CR3, CR0): what a guest page walk needs (paging.PageWalker)."""
        cr0, cr3 = self.uc.reg_read_batch((X.UC_X86_REG_CR0, X.UC_X86_REG_CR3))
        return int(cr3), int(cr0)

    def forget_code(self, page: int | None = None, drop_cache: bool = True) -> None:
        if not unbuilt(_v(self)):  # (no engine yet: nothing translated, no sites)
            C.forget_code(_v(self), page, drop_cache)

    def note_new_code(self) -> list[int]:
        return C.note_new_code(_v(self))

    def forget_physical(self, pa: int, drop_cache: bool) -> None:
        if not unbuilt(_v(self)):
            C.forget_physical(_v(self), pa, drop_cache)

    def drain_dirty_code(self) -> list[int] | None:
        return C.drain_dirty_code(_v(self))

    def set_protected(self, pages: set[int]) -> None:
        """Make exactly ``pages`` read-only to the guest (its stores #GP, TLFS §3.13), the rest of RAM writable."""
        if unbuilt(_v(self)):
            return defer(_v(self), "protected", set(pages))  # applied when the engine is built
        C.set_protected(_v(self), pages)

    def flush_tlb(self) -> None:
        """Drop this vCPU's cached translations (flush hypercalls; SDM: like a CR3 reload with PGE off)."""
        if not unbuilt(_v(self)):
            self.uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)

    def clip_to_deadline(self) -> None:
        """A timer may have been armed (an MSR or APIC write): end this run at this vCPU's nearest deadline
        (ready.own_deadline), so it fires on time -- the host shortens a quantum only to the deadlines known
        when it starts; on SMP the host then delivers it and runs this vCPU on (Host: ``deadline_cut``)."""
        m = self.m
        if m.fast or m.running is not _v(self):
            return
        d = own_deadline(m, _v(self))
        if d is None:
            return
        at = m.slice_b0 + max(0, d - m.slice_t0)
        if at <= int(self.native.bytes):
            return  # already due: delivered when this run next stops (inject_pending)
        if at < self.run_end:
            self.run_end = at
            if self.deadline_cut is not None:  # (None: a kick ended this run first; it goes on ending it)
                self.deadline_cut = True
            n = self.native
            n.limit = min(int(n.limit), at)  # the engine stops at the next block start from there

    def map_apic(self, base: int) -> None:
        """IA32_APIC_BASE moved this vCPU's xAPIC page (SDM vol. 3 §10.4.5): the engine maps it at ``base``; the
        old page is left unmapped (unassigned.py answers it, as QEMU's PC); over a device page the APIC wins. A
        base inside RAM is not mapped (QEMU overlays RAM with the APIC: not modelled)."""
        if base == self.apic_page:
            return
        if self.apic_page is not None:
            self.uc.mem_unmap(self.apic_page, 0x1000)
            self.apic_page = None
        mapped = [(b, e) for b, e, _p in self.uc.mem_regions() if b <= base + 0xFFF and e >= base]
        try:
            if mapped and base >= self.m.ram_size:  # an unassigned or device page there: the APIC wins (QEMU)
                self.uc.mem_unmap(base, 0x1000)
            self.uc.mmio_map(base, 0x1000, self.traps.on_mmio_read, None, self.traps.on_mmio_write, None)
            self.apic_page = base
        except UcError:
            self.stats.events["apic_base_not_mapped"] += 1
        self.flush_tlb()
        if self.m.running is _v(self):  # a map change inside a hook makes emu_start return (vcpu_code.set_protected)
            self.map_changed = True

    def end_run_within(self, ticks: int) -> None:
        """End this run at the first block start ``ticks`` from now (Machine.kick)."""
        n = self.native
        at = int(n.bytes) + ticks
        self.deadline_cut = None  # the run ends for another vCPU's sake: the host does not run this one on
        if at < self.run_end:
            self.run_end = at
            n.limit = min(int(n.limit), at)

    def event_pending(self) -> bool:
        """An NMI or a deliverable interrupt waits (IF = 1): the host runs this vCPU first (Host._schedule)."""
        if self.nmi_pending:
            return not D.nmi_blocked(_v(self))
        return not self.wait_sipi and D.has_interrupt(_v(self)) and self.if_set()

    def raise_exception(self, vector: int, error: int | None, rip: int, *, count_exit: bool = False,
                        deferred: bool = True) -> None:
        D.raise_exception(_v(self), vector, error, rip, count_exit=count_exit, deferred=deferred)

    def interruptible(self) -> bool:
        return D.interruptible(_v(self))

    def in_sti_shadow(self) -> bool:
        return D.in_sti_shadow(_v(self))

    def wants_to_run(self) -> bool:
        if self.sipi_vector is not None:
            return True
        if self.wait_sipi:
            return False
        if self.idle:
            self.m.poll_vcpu(_v(self))
            if self.apic.irr_vectors():
                self.idle = False
        if self.nmi_pending and not D.nmi_blocked(_v(self)):
            return True
        if self.halted:
            self.m.poll_vcpu(_v(self))
            return D.has_interrupt(_v(self)) and self.if_set()
        return not self.idle

    def if_set(self) -> bool:
        return bool(self.rip_flags.read()[1] & (1 << 9))


if TYPE_CHECKING:
    from viridian.machine.backend import VcpuBackend

    def _implements_the_protocol(v: Vcpu) -> VcpuBackend:
        return v  # mypy checks that this engine's vCPU is a VcpuBackend
