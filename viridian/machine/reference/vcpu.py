"""A vCPU of the reference engine (``--engine reference``): Unicorn through its public API only, one instance per
machine shared by every vCPU (engine.py), Python hooks, the same clock as the fast engine.

The clock (docs/architecture.md "The clock"): bytes of guest code of instructions that completed plus
EXIT_TICKS per exit. A block counts when it starts (the block hook); when the engine leaves a block early
(a stop, an exception) :meth:`Vcpu.settle` takes back the bytes from RIP on, exactly as the fast engine's
vn_settle does, so both engines agree on every exit's time. No RIP is written inside a hook (Unicorn 2.1.4
mishandles it): hooks stop the engine and the run loop applies the effect between runs.
"""

from __future__ import annotations

import ctypes
import logging
import traceback
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from unicorn import UcError
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

from viridian.machine import pc_machine
from viridian.machine.backend import CLOCK_FIELDS, EXIT_TICKS, MmioRead, MmioWrite
from viridian.machine.boot import BootRegisters
from viridian.machine.ports import ExitRequested
from viridian.machine.ready import own_deadline
from viridian.machine.reference import edge as E
from viridian.machine.reference import events as EV
from viridian.machine.reference import traps as T
from viridian.machine.reference.engine import MAX_ADDR, engine_of
from viridian.machine.reference.regs import NAMES, RegSet, ids
from viridian.machine.stats import VcpuStats

if TYPE_CHECKING:
    from viridian.machine.machine import Machine

log = logging.getLogger(__name__)
# MSRs Unicorn executes itself (the model never sees them; as the fast engine's NATIVE_MSRS): SYSENTER, EFER,
# STAR/LSTAR/CSTAR/SFMASK, FS/GS/KERNEL_GS base, TSC_AUX
ENGINE_MSRS = frozenset({0x174, 0x175, 0x176, 0xC000_0080, 0xC000_0081, 0xC000_0082, 0xC000_0083, 0xC000_0084,
                         0xC000_0100, 0xC000_0101, 0xC000_0102, 0xC000_0103})
SPURIOUS_CR2 = MAX_ADDR - 1  # engine fact (fast engine, engine.py): a run's end may write until-1 into CR2
_RIP_FLAGS = RegSet(ids("rip", "rflags"))
_RIP = RegSet(ids("rip",))
_CR2 = RegSet(ids("cr2",))
_PAGING = RegSet(ids("cr0", "cr3"))


def _running(m: Machine) -> Any:
    """The vCPU the machine is running (the core's attribute, public since the seam)."""
    return getattr(m, "running", None) if hasattr(m, "running") else getattr(m, "_running", None)


def _slice(m: Machine) -> tuple[int, int]:
    """(host time, vCPU clock) at the start of the running slice."""
    if hasattr(m, "slice_t0"):
        return int(m.slice_t0), int(m.slice_b0)
    return int(getattr(m, "_slice_t0", 0)), int(getattr(m, "_slice_b0", 0))


class _Msr(ctypes.Structure):
    _fields_ = [("rid", ctypes.c_uint32), ("value", ctypes.c_uint64)]  # uc_x86_msr (unicorn/x86.h)


class Vcpu:
    """One vCPU of a :class:`~viridian.machine.machine.Machine` on the shared reference engine."""

    engine_msrs = ENGINE_MSRS
    deadline_cut: bool | None = False  # the run ended at its own timer deadline; None: kicked (host.py)

    def __init__(self, machine: Machine, index: int, boot: BootRegisters) -> None:
        self.m, self.index = machine, index
        self.stats = VcpuStats()
        self.vp = machine.partition.vps[index]
        self.apic = machine.apics[index]
        self.halted = self.idle = self.wait_sipi = False
        self.sipi_vector: int | None = None
        self.multiboot_entry: tuple[int, int] | None = None
        self.nmi_pending = self.stop_requested = self.yield_pending = False
        self.ticks_used = 0
        # the clock and the block being run (engine.py's block hook; settle)
        self.bytes = self.blocks = 0
        self.pauses = self.pause_last = self.pause_loop_start = 0
        self.limit = MAX_ADDR
        self.exact = False  # replays (eventlog.py): a run ends at exactly run_end (single steps at the end)
        self.exact_now = False  # ... and this emu_start may stop before a block that would pass limit
        self.step_from: int | None = None  # ... and this emu_start was a step from here
        self.run_end = 0
        self.block_start = self.pend_end = 0
        self.pend_valid = False
        self.last_ran: tuple[int, int] | None = None  # (start, last byte) of the block that ran before
        self.stop_reason = ""
        self.pending_site = 0  # an MSR/CR8 site whose instruction is running (its post-hook completes it)
        self.resume_at: int | None = None  # a stub hook stopped before its instruction: the call is done
        self.pending_exc: tuple[int, int | None, int, bool] | None = None  # (vector, error, rip, external)
        self.syscall = False
        self.next_rip: int | None = None  # a hook's RIP redirect (VMCALL skipped), applied by the run loop
        self.fault_state_dirty = False  # the engine recorded a fault (hidden.py): reset before the next delivery
        self.retry_clean = False
        self.wp_fault: int | None = None
        self.df_retry: int | None = None
        self.unexplained_stop: tuple[int, int, int] | None = None  # (RIP, clock, rounds): arch.resume_stop
        self.edge = E.Edge()  # an instruction at the edge of RAM (edge.py)
        self.guest_cr2 = 0
        self.nmi_blocked = False  # from an NMI's delivery until the next IRET (SDM vol. 3 §6.7.1)
        self.window_active = self.window_first = self.window_shadow = self.window_prev_if = False
        self.window_open_at: int | None = None
        self.apic_page: int | None = 0xFEE0_0000
        self.disabled_page: bytearray | None = None  # the xAPIC page while IA32_APIC_BASE[11] = 0 (traps.py)
        self.efer = 0
        self.eng = engine_of(machine)
        self.loaded = False
        self.ctx = self.eng.new_context()  # a fresh CPU: no hidden state of another vCPU
        self.eng.load(self)
        EV.set_boot_state(self, boot)
        pc_machine.map_mmio(self)  # --machine pc: I/O APIC, HPET... (dispatched to the running vCPU)

    # -- plumbing --------------------------------------------------------------------------------------------
    @property
    def uc(self) -> Any:
        """The shared instance (holding this vCPU's registers while it runs)."""
        return self.eng.uc

    @property
    def ticks(self) -> int:
        return self.bytes

    def guarded(self, name: str, args: tuple[Any, ...], default: Any) -> Any:
        """Run hook handler ``name`` (traps.py/events.py): a Python exception never reaches Unicorn."""
        try:
            return T.HANDLERS[name](self, *args)
        except ExitRequested as ex:
            self.m.finish("exit", code=ex.code, vcpu=self.index)
            self.stop()
        except Exception as exc:
            log.debug("hook failure", exc_info=True)
            self.m.finish("error", vcpu=self.index, detail=f"host error in {name}: {exc!r}",
                          traceback=traceback.format_exc())
            self.stop()
        return default

    def reg(self, name: str) -> int:
        return int(self.read_registers((name,))[0])

    def read_registers(self, names: Iterable[str]) -> tuple[int, ...]:
        rs = RegSet(tuple(NAMES[n] for n in names))
        return tuple(int(x) for x in (rs.read(self.eng.h) if self.loaded else rs.read(None, self.ctx.context)))

    def write_registers(self, values: Mapping[str, int]) -> None:
        rs = RegSet(tuple(NAMES[n] for n in values))
        if self.loaded:
            rs.write(self.eng.h, list(values.values()))
        else:
            rs.write(None, list(values.values()), self.ctx.context)

    def read_msr(self, index: int) -> int:
        """An MSR the engine keeps, from the instance or from this vCPU's saved context (uc_context_reg_read)."""
        if self.loaded:
            return int(self.eng.uc.msr_read(index))
        msr = _Msr(index, 0)
        uclib.uc_context_reg_read(self.ctx.context, X.UC_X86_REG_MSR, ctypes.byref(msr))
        return int(msr.value)

    def rip_flags(self) -> tuple[int, int]:
        r = _RIP_FLAGS.read(self.eng.h) if self.loaded else _RIP_FLAGS.read(None, self.ctx.context)
        return int(r[0]), int(r[1])

    def paging(self) -> tuple[int, int]:
        cr0, cr3 = (_PAGING.read(self.eng.h) if self.loaded else _PAGING.read(None, self.ctx.context))
        return int(cr3), int(cr0)

    def read_virtual(self, vaddr: int, length: int) -> bytes | None:
        cr3, cr0 = self.paging()
        return self.m.walker.read(cr3, cr0, vaddr, length)

    def describe_instruction(self, rip: int) -> str:
        return T.describe(self, rip)

    # -- clock ------------------------------------------------------------------------------------------------
    def count_exit(self, reason: str, rip: int | None = None) -> None:
        """One exit: stats, EXIT_TICKS on the clock, the partition clock up to this vCPU's time, the tracer."""
        self.stats.by_reason[reason] += 1
        self.bytes += EXIT_TICKS
        self.m.sync_clock(self)
        if self.m.tracer is not None:
            self.m.tracer.exit(self, reason, rip)

    def settle(self, rip: int) -> None:
        """The engine left the current block at ``rip``: the bytes from there on did not run (vn_settle)."""
        if self.pend_valid and self.block_start <= rip <= self.pend_end:
            self.bytes -= self.pend_end + 1 - rip
            if rip == self.block_start:
                self.pend_valid = False
            else:
                self.pend_end = rip - 1

    def clock_state(self) -> dict[str, int]:
        return {k: int(getattr(self, k)) for k in CLOCK_FIELDS}

    def set_clock_state(self, counters: Mapping[str, int]) -> None:
        for k in CLOCK_FIELDS:
            setattr(self, k, int(counters[k]))

    # -- running ------------------------------------------------------------------------------------------------
    def stop(self) -> None:
        self.stop_requested = True
        if self.loaded and self.m.running is self:
            self.eng.uc.emu_stop()

    def end_run_within(self, ticks: int) -> None:
        at = self.bytes + ticks
        self.deadline_cut = None  # for another vCPU's sake: the host does not run this one on (host.py)
        if at < self.run_end:
            self.run_end = at
            self.limit = min(self.limit, at)

    def recheck_at_next_block(self) -> None:
        self.limit = min(self.limit, self.bytes)

    def clip_to_deadline(self) -> None:
        """A timer may have been armed: end this run at this vCPU's nearest deadline (as the fast engine)."""
        m = self.m
        if m.fast or m.running is not self:
            return
        d = own_deadline(m, self)
        if d is None:
            return
        at = m.slice_b0 + max(0, d - m.slice_t0)
        if at <= self.bytes:
            return
        if at < self.run_end:
            self.run_end = at
            if self.deadline_cut is not None:
                self.deadline_cut = True
            self.limit = min(self.limit, at)

    def run(self, budget: int) -> int:
        """Run guest code for at most ``budget`` ticks (a block may overshoot); returns ticks used."""
        start = self.bytes
        self.run_end = start + budget
        self.stop_requested = self.yield_pending = False
        eng = self.eng
        eng.load(self)
        if self.sipi_vector is not None:
            vector, self.sipi_vector = self.sipi_vector, None
            if not EV.bring_up(self, vector):
                return self.bytes - start
        if self.multiboot_entry is not None:
            (entry, info), self.multiboot_entry = self.multiboot_entry, None
            if not EV.enter_multiboot(self, entry, info):
                return self.bytes - start
        h = eng.h
        stepping = False  # an exact run: the block that holds run_end runs one instruction at a time
        while not self.m.done and self.bytes < (self.run_end if not self.exact else start + budget):
            if self.exact:  # the recorded end is where the recording stopped, whatever ended it (a deadline's
                self.run_end = start + budget  # clip, a kick): a replay's own clips do not move it
            EV.inject_pending(self)
            if self.halted or self.idle or self.m.done:
                break
            EV.set_window(self, EV.has_interrupt(self))
            self.limit = self.run_end if not EV.nmi_window(self) else min(self.run_end, self.bytes + 1)
            self.vp.before_run()
            self.stop_reason = ""
            rip = int(_RIP.read(h)[0])
            self.guest_cr2 = int(_CR2.read(h)[0])
            eng.map_changed = False
            self.exact_now = self.exact and not stepping and self.limit == self.run_end
            error: UcError | None = None
            if stepping:  # a cached translation has no instruction count in it: translate this one again
                eng.uc.ctl_remove_cache(rip, rip + 1)
            try:
                eng.uc.emu_start(rip, E.until(self), count=int(stepping))  # count 1: the step of an exact run
            except UcError as exc:
                error = exc
            finally:
                self.settle(int(_RIP.read(h)[0]))
                E.after_run(self)
                if int(_CR2.read(h)[0]) == SPURIOUS_CR2:
                    _CR2.write(h, (self.guest_cr2,))
                self.vp.after_run()
            if error is not None and self.wp_fault is None and not self.m.done:
                T.engine_error(self, error)
                break
            if self.exact_now and self.stop_reason == "budget" and \
                    self.bytes + self.pend_end + 1 - self.block_start > start + budget:
                stepping = True  # stopped short of the run's end before the block that holds it: step the rest
            self.step_from = rip if stepping else None
            if not self.after_stop():
                break
        used = self.bytes - start
        self.ticks_used += used
        return used

    def after_stop(self) -> bool:
        """Act on why emu_start returned; False ends the run."""
        if self.wp_fault is not None:  # TLFS §3.13: a write to the hypercall page raises #GP
            self.wp_fault = None
            EV.raise_exception(self, 13, 0, _RIP.read(self.eng.h)[0], count_exit=True, deferred=False)
            return True
        EV.apply_deferred(self)
        if self.syscall:
            self.syscall = False
            EV.enter_syscall(self)
            return True
        if self.stop_reason == "pause":
            # the hook at the PAUSE stopped before it: complete it (F3 90, a no-op that ends its block), as
            # when the engine's PAUSE helper stops after it on the fast engine -- settle took its bytes back
            at = int(_RIP.read(self.eng.h)[0])
            _RIP.write(self.eng.h, (at + 2,))
            self.bytes += 2
            self.pend_valid, self.pend_end = True, at + 1
            self.count_exit("pause")
            self.m.neg.record_event(self.index, self.m.clock.tsc(), "pause-loop")
            self.m.yield_vp(self.index, "pause-loop")
            return not self.yield_pending
        if self.stop_reason == "sites":
            return True
        if self.m.done or self.idle:
            return False
        if self.stop_requested:
            self.stop_requested = False
            return not self.yield_pending
        if self.stop_reason == "window":
            return True
        if self.stop_reason:
            return True  # budget, or a stop a hook asked for
        if self.eng.map_changed and not EV.ended_in_hlt(self):
            return True
        if self.step_from is not None and int(_RIP.read(self.eng.h)[0]) != self.step_from:
            return True  # a step of an exact run ran its one instruction
        EV.after_natural_stop(self)
        return True

    def site_reached(self, address: int) -> None:
        """The pre-hook at an MSR or CR8 site (the engine runs the instruction next; its post-hook completes it)."""
        b = self.read_virtual(address, 4) if 0x1000 - (address & 0xFFF) >= 4 else None
        if b is None:
            self.pending_site = address  # cannot check: keep the hook's word
            return
        msr = (b[0] == 0x0F and b[1] in (0x30, 0x32)) or (b[1] == 0x0F and b[2] in (0x30, 0x32))
        cr8 = (b[0] & 0xF4) == 0x44 and b[1] == 0x0F and b[2] in (0x20, 0x22) and (b[3] & 0xF8) == 0xC0
        self.pending_site = address if msr or cr8 else 0

    def pause_executed(self) -> None:
        """A PAUSE runs: count it and apply pause-loop exiting (Intel PLE semantics, as the fast engine)."""
        self.pauses += 1
        now = self.bytes
        if now - self.pause_last > self.m.ple_gap:
            self.pause_loop_start = now
        self.pause_last = now
        if self.m.ple_window and now - self.pause_loop_start > self.m.ple_window:
            self.pause_loop_start = now
            self.stop_reason = "pause"
            self.eng.uc.emu_stop()

    def window_block(self, address: int) -> bool:
        return EV.window_block(self, address)

    # -- scheduling ---------------------------------------------------------------------------------------------
    def wants_to_run(self) -> bool:
        if self.sipi_vector is not None:
            return True
        if self.wait_sipi:
            return False
        if self.idle:
            self.m.poll_vcpu(self)
            if self.apic.irr_vectors():
                self.idle = False
        if self.nmi_pending and not self.nmi_blocked:
            return True
        if self.halted:
            self.m.poll_vcpu(self)
            return EV.has_interrupt(self) and bool(self.rip_flags()[1] & 0x200)
        return not self.idle

    def event_pending(self) -> bool:
        if self.nmi_pending:
            return not self.nmi_blocked
        return not self.wait_sipi and EV.has_interrupt(self) and bool(self.rip_flags()[1] & 0x200)

    def interruptible(self) -> bool:
        return EV.interruptible(self)

    def in_sti_shadow(self) -> bool:
        return EV.in_sti_shadow(self)

    def inject_pending(self) -> bool:
        return EV.inject_pending(self)

    def raise_exception(self, vector: int, error: int | None, rip: int, *, count_exit: bool = False,
                        deferred: bool = True) -> None:
        EV.raise_exception(self, vector, error, rip, count_exit=count_exit, deferred=deferred)

    # -- memory, TLB, code ----------------------------------------------------------------------------------------
    def flush_tlb(self) -> None:
        if self.loaded:
            self.eng.flush_tlb()  # a parked vCPU's TLB is flushed when it is loaded

    def set_protected(self, pages: set[int]) -> None:
        self.eng.set_protected(pages)

    def map_apic(self, base: int) -> None:
        """IA32_APIC_BASE moved this vCPU's xAPIC page (SDM vol. 3 §10.4.5); the old page answers as unassigned."""
        if base == self.apic_page:
            return
        self.apic_page = base if self.eng.map_apic_page(base) else None
        if self.apic_page is None:
            self.stats.events["apic_base_not_mapped"] += 1
        self.eng.flush_tlb()

    def map_mmio(self, base: int, size: int, read: MmioRead, write: MmioWrite) -> None:
        self.eng.map_mmio(self, base, size, read, write)

    def forget_code(self, page: int | None = None, drop_cache: bool = True) -> None:
        self.eng.forget(page)

    def note_new_code(self) -> list[int]:
        return []  # one translation cache: the engine keeps code coherent itself

    def drain_dirty_code(self) -> list[int] | None:
        return []

    def forget_physical(self, pa: int, drop_cache: bool) -> None:
        return None

    # -- snapshots, fast paths ------------------------------------------------------------------------------------
    def save_cpu(self) -> dict[str, Any]:
        from viridian.state import StateError

        raise StateError("the reference engine does not take snapshots")

    def load_cpu(self, saved: Any) -> None:
        from viridian.state import StateError

        raise StateError("the reference engine does not resume snapshots")

    def resync(self) -> None:
        return None

    def set_fast_spin(self, ok: bool) -> None:
        return None  # every hypercall exits to the model here

    def close(self) -> None:
        """Release this vCPU; the machine's engine goes with its last vCPU (engine.py)."""
        self.eng.release(self)
