"""The seam: everything the engine-neutral machine core knows of a vCPU engine (issue 19 item 1).

The core (machine.py, host.py, ready.py, pc_machine.py, snapshot*.py, trace.py, replay.py, report.py, the
gdb stub's callers) reaches a vCPU only through :class:`VcpuBackend`; an engine (viridian/machine/unicorn/,
viridian/machine/reference/) implements it and registers in engines.py. The core never imports an engine's
modules, Unicorn or Capstone (tests/test_layering.py).

Conventions:
* Register names are the lower-case x86 names (:data:`GPRS`, ``"rip"``, ``"rflags"``, ``"cr0"``..``"cr8"``,
  segment selectors ``"cs"``..``"gs"``); values are unsigned integers. MSRs the engine keeps itself (EFER,
  STAR, LSTAR, FS/GS base... :attr:`VcpuBackend.engine_msrs`) are read with :meth:`VcpuBackend.read_msr`.
* Time: a vCPU's clock (:attr:`VcpuBackend.ticks`) counts bytes of completed guest instructions plus
  ``EXIT_TICKS`` per exit; the same guest and options give the same ticks on every engine.
* Flags (``halted``, ``idle``, ``wait_sipi``, ``sipi_vector``, ``nmi_pending``, ``multiboot_entry``,
  ``stop_requested``, ``yield_pending``) are plain attributes the core reads and writes (INIT/SIPI/NMI,
  snapshots); the engine's run loop acts on them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from viridian.devices.lapic import LocalApic
    from viridian.machine.boot import BootRegisters
    from viridian.machine.machine import Machine
    from viridian.machine.stats import VcpuStats
    from viridian.partition.vp import VirtualProcessor

EXIT_TICKS = 1000  # virtual TSC ticks one exit costs (~0.5 us at the default 2 GHz), on every engine
GPRS = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
CLOCK_FIELDS = ("bytes", "pauses", "pause_last", "pause_loop_start", "blocks")  # clock_state() keys (snapshots)

MmioRead = Callable[[int, int], int]  # (offset in the region, size) -> value
MmioWrite = Callable[[int, int, int], None]  # (offset in the region, size, value)


class VcpuBackend(Protocol):
    """One vCPU as the machine core sees it. Built by ``engines.vcpu_class(name)(machine, index, boot)``."""

    m: Machine
    index: int
    vp: VirtualProcessor
    apic: LocalApic
    stats: VcpuStats
    halted: bool  # HLT: runnable again when an interrupt can be delivered
    idle: bool  # GUEST_IDLE: runnable again when any interrupt is pending (even IF = 0)
    wait_sipi: bool  # parked until a SIPI (after INIT, or at boot for real kernels' APs)
    sipi_vector: int | None  # a SIPI arrived: the next run starts in real mode at vector << 12
    nmi_pending: bool
    multiboot_entry: tuple[int, int] | None  # (entry, info): the next run starts in 32-bit protected mode
    stop_requested: bool
    yield_pending: bool  # NotifyLongSpinWait / pause-loop exit: give up the rest of this slice
    deadline_cut: bool | None  # clip_to_deadline ended this run at its own deadline; None: kicked (host.py)
    ticks_used: int  # ticks run by this vCPU since the machine was built (report.py)
    engine_msrs: frozenset[int]  # MSRs the engine executes itself; the model never sees them (trace.py)

    # -- clock ---------------------------------------------------------------------------------------------
    @property
    def ticks(self) -> int:
        """This vCPU's clock: bytes of guest instructions it completed plus EXIT_TICKS per exit, since the
        machine was built. It only moves while :meth:`run` runs (or when an exit is counted); the machine maps
        it onto the partition clock for the slice that is running."""
        ...

    @property
    def pauses(self) -> int:
        """PAUSE instructions this vCPU executed (pause-loop exiting's raw count; report.py)."""
        ...

    def clock_state(self) -> dict[str, int]:
        """The clock counters (:data:`CLOCK_FIELDS`) as plain integers, for a snapshot."""
        ...

    def set_clock_state(self, counters: Mapping[str, int]) -> None:
        """Restore the counters :meth:`clock_state` gave (already range-checked by the snapshot loader)."""
        ...

    # -- running ---------------------------------------------------------------------------------------------
    def run(self, budget: int) -> int:
        """Run guest code for at most ``budget`` ticks and return the ticks used (a block may overshoot).
        The run ends early when the vCPU halts, idles, yields, the machine is done, or :meth:`stop` was
        called; pending interrupts/NMIs/SIPIs are delivered at instruction boundaries inside it, and every
        exit is handed to the machine (``Machine.rdmsr/wrmsr/hypercall``, the port bus, APIC MMIO)."""
        ...

    def stop(self) -> None:
        """End the current run at the next instruction boundary and re-evaluate (sets ``stop_requested``).
        Called from exit handlers (a kick, INIT, NMI, a yield, reset or crash, a host error); harmless when
        the vCPU is not running (the next :meth:`run` clears the request)."""
        ...

    def end_run_within(self, ticks: int) -> None:
        """End this run at the first block start ``ticks`` from now (Machine.kick: an IPI's bounded latency).
        Never lengthens a run; deterministic (virtual ticks, not wall time)."""
        ...

    def recheck_at_next_block(self) -> None:
        """Leave the engine at the next block start so the run loop re-evaluates pending interrupts, then go
        on within the same run (a device access that may have raised an interrupt: pc_machine.after_access)."""
        ...

    def clip_to_deadline(self) -> None:
        """A timer may have been armed by the exit being handled: end the run at this vCPU's nearest deadline
        (``ready.own_deadline``) so the timer fires on time, and set ``deadline_cut`` (the host then runs an SMP
        vCPU on after delivering it); no-op when it is already due. :meth:`end_run_within` sets it to None."""
        ...

    def count_exit(self, reason: str, rip: int | None = None) -> None:
        """Account one exit of ``reason`` (stats, EXIT_TICKS on the clock, the partition clock brought up to
        this vCPU's time, the tracer): for exits the core handles itself (device MMIO in pc_machine.py)."""
        ...

    # -- pending events (the scheduler: host.py, ready.py) -----------------------------------------------------
    def wants_to_run(self) -> bool:
        """Could this vCPU use a CPU now: not halted/idle/parked, or halted with a deliverable interrupt,
        idle with any pending interrupt, an unblocked NMI or a SIPI. May poll the vCPU's timers
        (``Machine.poll_vcpu``); ready.py caches the answer until something about the vCPU changes."""
        ...

    def event_pending(self) -> bool:
        """An unblocked NMI or a deliverable interrupt (IF = 1) waits: the host runs this vCPU first."""
        ...

    def interruptible(self) -> bool:
        """At the current boundary an external interrupt could be delivered (IF = 1, no STI/MOV SS shadow)."""
        ...

    def in_sti_shadow(self) -> bool:
        """The vCPU stopped inside an STI or MOV SS shadow (snapshots refuse such a point)."""
        ...

    def raise_exception(self, vector: int, error: int | None, rip: int, *, count_exit: bool = False,
                        deferred: bool = True) -> None:
        """Deliver exception ``vector`` (with ``error`` code, or None) at instruction ``rip`` through the IDT
        (SDM vol. 3 §6.12): used for a model's Fault on an exit. ``deferred``: the engine applies it when the
        current hook returns (hooks must not redirect RIP on Unicorn)."""
        ...

    # -- memory, TLB, code --------------------------------------------------------------------------------
    def flush_tlb(self) -> None:
        """Drop this vCPU's cached guest-virtual translations (flush hypercalls; like a CR3 reload, PGE off)."""
        ...

    def set_protected(self, pages: set[int]) -> None:
        """Make exactly ``pages`` (guest-physical page addresses: read-only overlays such as the hypercall
        page) read-only to this vCPU: a store into one raises #GP at the storing instruction (TLFS §3.13)."""
        ...

    def map_apic(self, base: int) -> None:
        """IA32_APIC_BASE moved this vCPU's xAPIC page to ``base`` (SDM vol. 3 §10.4.5): its MMIO exits
        follow; the old page becomes unassigned memory."""
        ...

    def map_mmio(self, base: int, size: int, read: MmioRead, write: MmioWrite) -> None:
        """Map a device's MMIO region (page-aligned ``size``) into this vCPU: each access calls ``read`` /
        ``write`` (offsets from ``base``) at an instruction boundary inside the run."""
        ...

    def read_virtual(self, vaddr: int, length: int) -> bytes | None:
        """``length`` bytes at guest-virtual ``vaddr`` through the vCPU's current paging (None if unmapped)."""
        ...

    def describe_instruction(self, rip: int) -> str:
        """One line of disassembly of the instruction at guest-virtual ``rip`` (error reports, --trace)."""
        ...

    def forget_code(self, page: int | None = None, drop_cache: bool = True) -> None:
        """Guest code changed under the engine (the hypercall page moved, a code page was rewritten): drop
        translations and cached code facts for ``page`` (a guest-physical page; None = all) before it runs
        again. An engine with one translation cache for all vCPUs may only need it once per machine."""
        ...

    def note_new_code(self) -> list[int]:
        """Guest-physical pages this vCPU executed for the first time in the slice that just ended (the
        machine then watches them for stores); [] for an engine that keeps code coherent by itself."""
        ...

    def drain_dirty_code(self) -> list[int] | None:
        """Code pages this vCPU stored into since the last call (None: too many to list, forget all)."""
        ...

    def forget_physical(self, pa: int, drop_cache: bool) -> None:
        """Another vCPU (or this one) wrote code page ``pa``: forget it here (``drop_cache``: also this
        engine's translations, which the writer's own engine already invalidated)."""
        ...

    # -- registers -----------------------------------------------------------------------------------------
    def read_registers(self, names: Iterable[str]) -> tuple[int, ...]:
        """The values of the named registers (see the module docstring), in order."""
        ...

    def read_msr(self, index: int) -> int:
        """An MSR the engine keeps itself (:attr:`engine_msrs`), read as the guest would."""
        ...

    def save_cpu(self) -> dict[str, Any]:
        """The architectural register state as named JSON fields (snapshot_cpu.py's format); refuses
        (viridian.state.StateError) a state this engine cannot restore."""
        ...

    def load_cpu(self, saved: Any) -> None:
        """Restore what :meth:`save_cpu` gave (every field checked: StateError/ValueError on a bad one)."""
        ...

    def resync(self) -> None:
        """The model changed state the engine caches (a snapshot was loaded: TSC offset, EFER...): re-read it."""
        ...

    # -- fast paths ------------------------------------------------------------------------------------------
    def set_fast_spin(self, ok: bool) -> None:
        """Whether a fast NotifyLongSpinWait may complete inside the engine without an exit to the model
        (offered, hypercalls enabled, no yield possible, no trace). An engine without that path ignores it."""
        ...

    # -- end of life -----------------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the engine (Machine.close; idempotent): afterwards nothing native reaches the machine's RAM
        or this vCPU's state, so both are plain garbage. Stats and flags stay readable; registers do not."""
        ...


VcpuFactory = Callable[["Machine", int, "BootRegisters"], VcpuBackend]

__all__ = ["CLOCK_FIELDS", "EXIT_TICKS", "GPRS", "MmioRead", "MmioWrite", "VcpuBackend", "VcpuFactory"]
