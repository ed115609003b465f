"""One emulated vCPU: a Unicorn instance over the shared RAM, its traps, and interrupt/exception entry.

Traps (each becomes an exit counted in :class:`~viridian.machine.stats.VcpuStats`):
CPUID, RDTSC/RDTSCP (insn hooks) · RDMSR/WRMSR (native pre-hook at each discovered site + a Python hook on
the next instruction, so Unicorn's own no-op execution of the MSR instruction needs no RIP redirect) ·
the hypercall page (a hook inside our stub; VMCALL/VMMCALL anywhere else through the invalid-insn hook) ·
HLT (the engine stops after it) · IN/OUT · xAPIC MMIO · exceptions (the INTR hook; delivered through the IDT).
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import traceback
from typing import TYPE_CHECKING, Any

from unicorn import (
    UC_HOOK_INSN,
    UC_HOOK_INSN_INVALID,
    UC_HOOK_INTR,
    UC_HOOK_MEM_WRITE_PROT,
    UC_MODE_64,
    UC_PROT_ALL,
    UC_PROT_READ,
    UcError,
)
from unicorn import x86_const as X

from msr.faults import Fault
from viridian.machine import exits, pc_machine
from viridian.machine import layout as L
from viridian.machine.backend import EXIT_TICKS
from viridian.machine.boot import BootRegisters
from viridian.machine.multiboot import BOOT_MAGIC
from viridian.machine.ports import ExitRequested
from viridian.machine.stats import VcpuStats
from viridian.machine.unicorn import engine as E
from viridian.machine.unicorn import engine_build, quiet_ple, unassigned, vcpu_io
from viridian.machine.unicorn import vcpu_code as C
from viridian.machine.unicorn import vcpu_delivery as D
from viridian.machine.unicorn.arch_faults import ended_in_hlt
from viridian.machine.unicorn.engine_build import new_uc
from viridian.machine.unicorn.lazy import LazyEngine, capture_boot, load_boot_state, unbuilt
from viridian.machine.unicorn.lost_fault import recover_lost_fault, resume_stop
from viridian.machine.unicorn.native import (
    STOP_BUDGET,
    STOP_NEW_SITES,
    STOP_PAUSE,
    STOP_TABLE_FULL,
    STOP_WINDOW,
    TABLE_PAGES,
    VnState,
    function_address,
    library,
    model_constants,
)
from viridian.machine.unicorn.realmode import bring_up, enter_multiboot
from viridian.machine.unicorn.syscall import enter_syscall
from viridian.machine.unicorn.vcpu_seam import SeamMethods
from viridian.machine.unicorn.vcpu_traps import NATIVE_READS, InstructionTraps

if TYPE_CHECKING:
    from viridian.machine.machine import Machine

log = logging.getLogger(__name__)

NATIVE_MSRS = frozenset({0x174, 0x175, 0x176, 0xC000_0080, 0xC000_0081, 0xC000_0082, 0xC000_0083, 0xC000_0084,
                         0xC000_0100, 0xC000_0101, 0xC000_0102, 0xC000_0103})  # SYSENTER, EFER, STAR.., FS/GS
GPRS = E.GPRS
MASK64 = (1 << 64) - 1
_HYPERCALL_READ = (X.UC_X86_REG_RAX, X.UC_X86_REG_RBX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX, X.UC_X86_REG_RSI,
                   X.UC_X86_REG_RDI, X.UC_X86_REG_R8, *E.XMM, X.UC_X86_REG_CS, X.UC_X86_REG_CR0)
_CPU_VIEW = (X.UC_X86_REG_RIP, X.UC_X86_REG_RSP, X.UC_X86_REG_RFLAGS, X.UC_X86_REG_CS, X.UC_X86_REG_SS,
             X.UC_X86_REG_CR0, X.UC_X86_REG_CR3)


def _write_boot_registers(uc: Any, b: BootRegisters, cr3: int) -> None:
    """The guest contract's entry state (README); ``cr3`` is lazy.load_boot_state's scratch tables."""
    uc.reg_write(X.UC_X86_REG_GDTR, (0, b.gdt, 7 * 8 - 1, 0))
    uc.reg_write(X.UC_X86_REG_IDTR, (0, 0, 0, 0))
    uc.reg_write(X.UC_X86_REG_CR3, cr3)
    uc.reg_write(X.UC_X86_REG_CR4, L.CR4_BOOT)
    uc.msr_write(E.EFER, L.EFER_BOOT)
    uc.reg_write(X.UC_X86_REG_CR0, L.CR0_BOOT)
    uc.reg_write(X.UC_X86_REG_CS, b.cs)
    for reg in (X.UC_X86_REG_SS, X.UC_X86_REG_DS, X.UC_X86_REG_ES, X.UC_X86_REG_FS, X.UC_X86_REG_GS):
        uc.reg_write(reg, b.ds)
    uc.reg_write(X.UC_X86_REG_TR, (L.TSS_SEL, b.tss, L.TSS_LIMIT, 0x8B))
    uc.reg_write_batch([(X.UC_X86_REG_RIP, b.rip), (X.UC_X86_REG_RSP, b.rsp), (X.UC_X86_REG_RDI, b.rdi),
                        (X.UC_X86_REG_RSI, b.rsi), (X.UC_X86_REG_RDX, b.rdx), (X.UC_X86_REG_RCX, b.rcx),
                        (X.UC_X86_REG_RFLAGS, 2)])


class Vcpu(LazyEngine, SeamMethods):
    """A vCPU of a :class:`~viridian.machine.machine.Machine` (implements machine.backend.VcpuBackend)."""

    engine_msrs = NATIVE_MSRS

    def __init__(self, machine: Machine, index: int, boot: BootRegisters) -> None:
        self.m = machine
        self.index = index
        self.stats = VcpuStats()
        self.halted = False  # HLT: runnable again when an interrupt can be delivered
        self.idle = False  # GUEST_IDLE: runnable again when any interrupt is pending (even IF = 0)
        self.wait_sipi = False  # parked until a SIPI (after INIT, or at boot with --ap-start sipi)
        self.sipi_vector: int | None = None
        self.multiboot_entry: tuple[int, int] | None = None  # (entry, info): start in 32-bit protected mode
        self.nmi_pending = False  # a SIPI arrived: start in real mode at vector << 12
        self.stop_requested = False
        self.yield_pending = False  # NotifyLongSpinWait: give up the rest of this slice
        self.ticks_used = 0
        self.sites: dict[int, int] = {}  # MSR instruction address -> 1 for WRMSR, 0 for RDMSR
        self.cr8_sites: dict[int, tuple[bool, int]] = {}  # MOV CR8 address -> (is write, GPR register id)
        self.hooked_pages: set[int] = set()
        self.pause_sites: set[int] = set()  # PAUSE hooks (without vn_svm_check): one per address, ever
        self.df_retry: int | None = None  # arch_faults.py: the instruction an engine #DF is run again at
        self.unexplained_stop: tuple[int, int, int] | None = None  # (RIP, clock, rounds): lost_fault.resume_stop
        self.stub_hooks: set[int] = set()
        self.resume_at: int | None = None  # a hook stopped the engine before its instruction ran
        # Engine rule (measured): a RIP write inside a code/MMIO/invalid-insn hook leaves Unicorn unable to
        # report later exceptions. Those hooks stop the engine and leave the redirect to the run loop.
        self.next_rip: int | None = None
        self.pending_exc: tuple[int, int | None, int] | None = None
        self._shadow = False
        self.window_open_at: int | None = None  # the window hook saw an open boundary here (not after STI)
        self.hidden_flags: D.HiddenFlags | None = None  # the engine's hflags/hflags2 (vcpu_delivery.hidden_flags)
        self.nmi_window = False  # an NMI waits for the IRET that unblocks NMIs: run one block at a time
        self.run_end = 0  # this run ends once the clock (bytes) reaches it
        self.exact = False  # replays (eventlog.py): a run ends at exactly run_end (single steps at the end)
        self.vp = machine.partition.vps[index]
        self.apic = machine.apics[index]
        self.traps = InstructionTraps(self)
        self._boot = boot  # the engine comes on first use (lazy.py): an AP never started costs no engine
        self._boot_descs = capture_boot(machine.ram, boot, L.PML4)  # what an eager build would load, now
        if index == 0:  # ... so what would refuse an engine refuses the machine now, in one line
            engine_build.check_engine()
            engine_build.disabled()
            library()
            engine_build.reserve_check(machine.vcpu_count * (engine_build.tcg_buffer_size() + (16 << 20)),
                                       f"{machine.vcpu_count} vCPU engines")

    def build_engine(self) -> None:
        """The Unicorn instance and all that hangs on it (lazy.py runs this on the first access to any of it)."""
        machine, index, boot = self.m, self.index, self._boot
        self.uc: Any = new_uc(UC_MODE_64, f"vCPU {index}")
        uc = self.uc
        load_boot_state(uc, boot, self._boot_descs, _write_boot_registers)  # never from the guest's tables
        uc.mem_map_ptr(0, machine.ram_size, UC_PROT_ALL, ctypes.addressof(machine.ram_buffer))
        uc.mmio_map(L.APIC_BASE, 0x1000, self.traps.on_mmio_read, None, self.traps.on_mmio_write, None)
        self.apic_page: int | None = L.APIC_BASE  # where this vCPU's xAPIC page is mapped (map_apic)
        pc_machine.map_mmio(self)  # --machine pc: I/O APIC, HPET...
        self.native = VnState()
        self._table_map = mmap.mmap(-1, TABLE_PAGES * 8)  # zero pages, resident only once used (not memset)
        self._table = (ctypes.c_uint64 * TABLE_PAGES).from_buffer(self._table_map)
        lib = library()
        n = self.native
        n.limit, n.stop = 1 << 62, E.c_function("uc_emu_stop")
        n.reg_write = E.c_function("uc_reg_write")
        n.reg_read, n.exit_ticks = E.c_function("uc_reg_read"), EXIT_TICKS
        model_constants(n)  # the C paths' constants from the model (spin input, COM1 LSR, our stub)
        n.rcx_reg, n.rax_reg, n.cs_reg = X.UC_X86_REG_RCX, X.UC_X86_REG_RAX, X.UC_X86_REG_CS
        n.rflags_reg = X.UC_X86_REG_RFLAGS
        n.cr0_reg, n.cr3_reg, n.cr4_reg = X.UC_X86_REG_CR0, X.UC_X86_REG_CR3, X.UC_X86_REG_CR4
        n.table = ctypes.cast(self._table, ctypes.POINTER(ctypes.c_uint64))
        n.table_mask, n.rip_reg, n.prot_read = TABLE_PAGES - 1, X.UC_X86_REG_RIP, UC_PROT_READ
        self.lib = lib
        self._native_ref = ctypes.byref(n)
        self._engine_enter, self._engine_leave = lib.vn_enter, lib.vn_leave
        self._settle, self._uch = lib.vn_settle, uc._uch
        self._settle.argtypes = [ctypes.c_void_p, ctypes.POINTER(VnState), ctypes.c_uint64]
        self._settle.restype = ctypes.c_uint64
        self.site_fn = function_address(lib, "vn_site")
        msr_done = self.guard(self.msr_done)  # behind vn_msr_done, which answers NATIVE_READS itself
        self._msr_slow = E.CODE_CB(lambda _h, address, size, _ud: msr_done(uc, address, size, None))
        n.msr_slow = ctypes.cast(self._msr_slow, ctypes.c_void_p)
        self.msr_done_fn = function_address(lib, "vn_msr_done")
        self.cr8_done_hook = self.guard(self.traps.cr8_done)
        self.pause_fn = function_address(lib, "vn_pause")
        self.stub_fn = function_address(lib, "vn_stub")
        n.ple_gap, n.ple_window = machine.ple_gap, machine.ple_window
        C.watch_stores(self, lib)
        self.block_hooked = False
        if not n.tb_patch:
            C.hook_blocks(self)
        self.cpuid_regs = E.FastRegs(uc, (X.UC_X86_REG_RAX, X.UC_X86_REG_RCX, X.UC_X86_REG_RBX, X.UC_X86_REG_RDX))
        self._cpuid_hook = E.hook_insn_skip(uc, X.UC_X86_INS_CPUID, self.guard(self.traps.on_cpuid, 1))
        self.keep_alive: list[object] = []
        # RDTSC(P) natively (vn_rdtsc/vn_rdtscp) unless every exit must be seen (--trace) or time is the wall
        # clock (--fast)
        quiet = not machine.fast and machine.tracer is None
        self.native_tsc_on = quiet and engine_build.enabled("native_tsc")
        self.native_msr_on = quiet and engine_build.enabled("native_msr")  # vn_msr_done answers NATIVE_READS
        native_io = quiet and engine_build.enabled("native_serial")
        self._native_any = self.native_tsc_on or self.native_msr_on or native_io
        n.rdx_reg, n.msr_reg = X.UC_X86_REG_RDX, X.UC_X86_REG_MSR
        if self.native_tsc_on:
            E.hook_insn_native(uc, X.UC_X86_INS_RDTSC, function_address(lib, "vn_rdtsc"), ctypes.addressof(n))
            E.hook_insn_native(uc, X.UC_X86_INS_RDTSCP, function_address(lib, "vn_rdtscp"), ctypes.addressof(n))
        else:
            self.keep_alive.append(E.hook_insn_skip(uc, X.UC_X86_INS_RDTSC, self.guard(self.traps.on_rdtsc, 1)))
            self.keep_alive.append(E.hook_insn_skip(uc, X.UC_X86_INS_RDTSCP, self.guard(self.traps.on_rdtscp, 1)))
        uc.hook_add(UC_HOOK_INSN, self.guard(self._syscall_hook), None, 1, 0, X.UC_X86_INS_SYSCALL)
        self._syscall = False  # the engine stopped after a SYSCALL it did not perform (syscall.py)
        vcpu_io.install(self, lib, native=native_io)  # COM1's hot accesses natively, like RDTSC
        uc.hook_add(UC_HOOK_INSN_INVALID, self.guard(self.traps.on_invalid, True))
        uc.hook_add(UC_HOOK_INTR, self.guard(self._interrupt))
        uc.hook_add(UC_HOOK_MEM_WRITE_PROT, self.guard(self._write_protected, False))
        unassigned.install(self)  # beyond RAM: reads all-ones, writes dropped (QEMU's PCI master abort)
        self._wp_fault: int | None = None
        self.code_vas: dict[int, set[int]] = {}  # physical code page -> the virtual pages it ran at here
        self.map_changed = False  # set_protected ran inside a hook: the engine returns, not an error
        self.protected: set[int] = set()  # read-only overlay pages (hypercall page...) mapped R+X here
        self._msr_regs = E.FastRegs(uc, (X.UC_X86_REG_RCX, X.UC_X86_REG_RAX, X.UC_X86_REG_RDX))
        self.rax_rdx = E.FastRegs(uc, (X.UC_X86_REG_RAX, X.UC_X86_REG_RDX))
        self.rax_reg = E.FastRegs(uc, (X.UC_X86_REG_RAX,))
        self.hc_regs = E.FastRegs(uc, _HYPERCALL_READ)
        self.cpu_view = E.FastRegs(uc, _CPU_VIEW)
        self.rip_flags = E.FastRegs(uc, (X.UC_X86_REG_RIP, X.UC_X86_REG_RFLAGS))
        self._cr2 = E.FastRegs(uc, (X.UC_X86_REG_CR2,))
        self.guest_cr2 = 0  # the guest's CR2 across a run (engine.SPURIOUS_CR2)
        self.sp_flags = E.FastRegs(uc, (X.UC_X86_REG_RSP, X.UC_X86_REG_RFLAGS))
        self.idtr_reg, self.tr_reg = E.MmrReg(uc, X.UC_X86_REG_IDTR), E.MmrReg(uc, X.UC_X86_REG_TR)
        self.gdtr_reg = E.MmrReg(uc, X.UC_X86_REG_GDTR)  # the IDT gate's code segment (delivery.py)
        self.efer = int(uc.msr_read(E.EFER))

    def close(self) -> None:
        """End of life (Machine.close): the engine closed in order, before RAM and native state can go."""
        from viridian.machine.unicorn.teardown import close_engine

        close_engine(self)

    def guard(self, fn: Any, default: Any = None) -> Any:
        """Hooks never let a Python exception reach Unicorn: a host bug ends the run with status "error"."""

        def hook(*args: Any) -> Any:
            try:
                return fn(*args)
            except ExitRequested as ex:
                self.m.finish("exit", code=ex.code, vcpu=self.index)
                self.uc.emu_stop()
            except Exception as exc:
                log.debug("hook failure", exc_info=True)
                self.m.finish("error", vcpu=self.index, detail=f"host error in {fn.__name__}: {exc!r}",
                              traceback=traceback.format_exc())
                self.uc.emu_stop()
            return default

        return hook

    # -- clock ------------------------------------------------------------------------------------------
    @property
    def pauses(self) -> int:
        return 0 if unbuilt(self) else int(self.native.pauses)

    @property
    def ticks(self) -> int:
        return 0 if unbuilt(self) else int(self.native.bytes)

    def count_exit(self, reason: str, rip: int | None = None) -> None:
        """Account one exit and bring the partition clock up to this vCPU's time (``rip``: the trapping
        instruction when RIP is elsewhere, e.g. the MSR site behind a next-instruction hook)."""
        self.stats.by_reason[reason] += 1
        n = self.native
        n.ple_quiet = 0  # an exit handled here may make an interrupt deliverable (quiet_ple.py)
        n.bytes += EXIT_TICKS
        m = self.m
        if m.fast or m.running is not self:
            m.sync_clock(self)
        else:  # inline of Machine.sync_clock (the exit hot path)
            now = m.slice_t0 + (n.bytes - m.slice_b0)
            clock = m.clock
            clock.catch_up(now)
        if m.tracer is not None:
            m.tracer.exit(self, reason, rip)

    def settle_clock(self, rip: int) -> None:
        """The clock counts bytes of instructions that ran: a block is counted when it starts, so when the
        engine leaves it (or an exception leaves it) at ``rip`` inside it, the bytes from ``rip`` on are taken
        back -- they run, and count, in a later block. Whether the engine stops right after an access or at
        the next block start, and however the translator split the code into blocks, the count is the same
        (tests/machine/test_fastpath_equivalence.py)."""
        self._settle(self._uch, self._native_ref, rip & MASK64)  # csrc vn_settle

    def stop(self) -> None:
        self.stop_requested = True
        self.uc.emu_stop()

    # -- running ----------------------------------------------------------------------------------------
    def run(self, budget: int) -> int:
        """Run guest code for at most ``budget`` ticks (a block may overshoot); returns ticks used."""
        n, uc = self.native, self.uc
        start = int(n.bytes)
        self.run_end = start + budget  # clip_to_deadline may bring it forward
        self.stop_requested = self.yield_pending = False
        n.ple_quiet = 1  # quiet_ple.py: until this run handles an exit in Python (count_exit)
        if self.sipi_vector is not None:
            vector, self.sipi_vector = self.sipi_vector, None
            if not bring_up(self, vector):
                return int(n.bytes) - start
        if self.multiboot_entry is not None:
            (entry, info), self.multiboot_entry = self.multiboot_entry, None
            if not enter_multiboot(self, entry, BOOT_MAGIC, info):
                return int(n.bytes) - start
        stepping = False  # an exact run: the block that holds run_end runs one instruction at a time
        while not self.m.done and n.bytes < (self.run_end if not self.exact else start + budget):
            if self.exact:  # the recorded end is where the recording stopped, whatever ended it (a deadline's
                self.run_end = start + budget  # clip, a kick): a replay's own clips do not move it
            self.inject_pending()
            if self.halted or self.idle or self.m.done:
                break
            self.traps.set_window(D.has_interrupt(self))
            limit = self.run_end if not self.nmi_window else min(self.run_end, int(n.bytes) + 1)
            self.vp.before_run()
            n.stop_reason = 0
            n.limit = limit
            n.exact = exact_now = int(self.exact and not stepping and limit == self.run_end)
            rip = self.rip_flags.read()[0]
            if self._native_any:
                self.traps.arm_native_tsc()
                vcpu_io.arm(self)
            elif n.fast_spin_ok:  # vn_stub raises tsc_floor too
                self.traps.arm_native_tsc()
            self.map_changed = False  # only a change during this run explains its end (else a HLT was lost)
            n.ple_quiet = int(n.ple_quiet and self._native_any and quiet_ple.allowed(self, limit))
            self._engine_enter(self._native_ref)  # TLB fills now belong to this engine (engine_watch.c)
            self.guest_cr2 = self._cr2.read()[0]
            if stepping:  # a cached translation has no instruction count in it: translate this one again
                uc.ctl_remove_cache(rip, rip + 1)
            try:
                uc.emu_start(rip, unassigned.until(self), count=int(stepping))  # until: MAX_ADDR, or an
                # instruction at the edge of RAM; count 1: the step of an exact run
            except UcError as exc:
                if self._wp_fault is None:
                    self._engine_error(exc)
            finally:
                self._engine_leave()
                self._settle(self._uch, self._native_ref, MASK64)  # settle_clock at the engine's RIP
                unassigned.after_run(self)  # an all-ones page that stood in for one run goes
                if n.wp_fault:  # vn_tbipf stopped a store into a read-only overlay (set_protected)
                    self._wp_fault, n.wp_fault = int(n.wp_fault) - 1, 0
                if self._cr2.read()[0] == E.SPURIOUS_CR2:
                    self._cr2.write(self.guest_cr2)
                self.vp.after_run()
            if n.ple_exits:
                quiet_ple.collect(self)
            if n.rdtsc_count or n.native_reads or (n.fast_spin_count and not self.m.fast):  # vn_stub's clock
                self.traps.collect_native_tsc()
            vcpu_io.collect(self)
            patch_failed = bool(n.tb_patch_failed)
            if patch_failed:  # a block could not be patched (csrc/block_entry.c); it did not run
                C.hook_blocks(self)
            code_written = bool(n.dirty_count)
            if code_written:  # vn_write stopped the engine: every vCPU forgets the code before going on
                self.m.sync_code(self, slice_end=False)
            if self._wp_fault is not None:  # TLFS §3.13: a write to the hypercall page raises #GP
                self._wp_fault = None
                self.raise_exception(13, 0, uc.reg_read(X.UC_X86_REG_RIP), count_exit=True, deferred=False)
                continue
            self.apply_deferred()
            if self._syscall:
                self._syscall = False
                enter_syscall(self)
                continue
            if n.stop_reason == STOP_PAUSE:  # pause-loop exit: a spinning vCPU gives way if another waits
                if not n.pause_native:  # a hook at the PAUSE stopped before it: complete it as vn_svm_check's
                    at = self.rip_flags.read()[0]  # stop does (PAUSE is F3 90, a no-op; it ends its block)
                    self.rip_flags.write(at + 2)
                    n.bytes += 2  # settle_clock took it back
                    n.pend_valid, n.pend_end = 1, at + 1
                self.count_exit("pause")
                self.m.neg.record_event(self.index, self.m.clock.tsc(), "pause-loop")
                self.m.yield_vp(self.index, "pause-loop")
                if self.yield_pending:
                    break
                continue
            if n.stop_reason in (STOP_NEW_SITES, STOP_TABLE_FULL):
                self._hook_page(int(n.new_page), full=n.stop_reason == STOP_TABLE_FULL)
                continue
            if self.m.done or self.idle:
                break
            if self.stop_requested:
                self.stop_requested = False
                if self.yield_pending:
                    break
                continue
            if n.stop_reason == STOP_WINDOW:  # the interrupt window opened (window_block)
                self.window_open_at = int(n.window_open_at)
                continue
            if n.stop_reason:
                stepping = stepping or bool(exact_now and n.stop_reason == STOP_BUDGET  # short of run_end, before
                                            and n.bytes + n.pend_end + 1 - n.block_start > start + budget)  # its block
                continue  # budget or interrupt-window slice used up
            if self.map_changed and not ended_in_hlt(self):  # a HLT after the change still halts
                self.map_changed = False
                continue
            if code_written or patch_failed or (stepping and self.rip_flags.read()[0] != rip):
                continue  # (a step ran its one instruction)
            self._after_natural_stop()
            if self.halted:
                continue  # an interrupt may already be deliverable (inject_pending wakes it)
        if n.fast_spin_count:  # calls completed natively (vn_stub) are accounted like any other
            k, n.fast_spin_count = int(n.fast_spin_count), 0
            self.stats.by_reason["hypercall"] += k
            self.stats.hypercalls[0x0008] += k
            self.stats.events["long spin wait"] += k
            self.m.neg.record_hypercall(self.index, self.m.clock.tsc(), 0x0008, "SUCCESS", k)
        used = int(n.bytes) - start
        self.ticks_used += used
        return used

    def apply_deferred(self) -> None:
        if self.next_rip is not None:
            self.uc.reg_write(X.UC_X86_REG_RIP, self.next_rip)
            self.next_rip = None
        if self.pending_exc is not None and not self.m.done:
            vector, error, rip = self.pending_exc
            self.pending_exc = None
            self._enter(vector, error, rip)

    def _after_natural_stop(self) -> None:
        """emu_start returned by itself: HLT (RIP is after it)."""
        rip = self.uc.reg_read(X.UC_X86_REG_RIP)
        prev = self.read_virtual(rip - 1, 1)
        if prev == b"\xf4" and self.cpu_view.read()[3] & 3:  # SDM: HLT at CPL > 0 raises #GP(0)
            self.raise_exception(13, 0, rip - 1, count_exit=True, deferred=False)
            return
        if prev == b"\xf4":
            self.count_exit("hlt")
            self.m.neg.record_event(self.index, self.m.clock.tsc(), "hlt")
            self.halted = True
            return
        if unassigned.edge_stop(self, rip) or recover_lost_fault(self, rip) or resume_stop(self, rip):
            return
        self.m.finish("error", vcpu=self.index, detail=f"engine stopped unexpectedly at {rip:#x}",
                      disasm=self.m.disassemble(self, rip))

    def _engine_error(self, exc: UcError) -> None:
        if unassigned.fetch_fault(self, exc):  # a fetch from unassigned memory: #UD (unassigned.py)
            return
        rip = self.uc.reg_read(X.UC_X86_REG_RIP)
        self.m.finish("error", vcpu=self.index, detail=f"engine error at {rip:#x}: {exc}",
                      disasm=self.m.disassemble(self, rip))

    # -- code: MSR sites, translation coherence (viridian/machine/unicorn/vcpu_code.py) ---------------------------------
    def _hook_page(self, page: int, full: bool = False) -> None:
        C.hook_page(self, page, full)

    def _write_protected(self, uc: Any, access: int, address: int, size: int, value: int, _ud: Any) -> bool:
        self._wp_fault = address
        return False  # the engine stops with the RIP of the writing instruction; the loop injects #GP

    def _syscall_hook(self, uc: Any, _ud: Any) -> None:
        self._syscall = True
        uc.emu_stop()

    def msr_done(self, uc: Any, address: int, size: int, _ud: Any) -> None:
        site = int(self.native.pending_site)
        if not site or address - site not in (2, 3) or site not in self.sites:
            return
        self.native.pending_site = 0
        ecx, eax, edx = self._msr_regs.read()
        index = ecx & 0xFFFF_FFFF
        if self.sites[site]:  # what the write means: exits.py; what the engine caches of it: here
            res = exits.msr_write(self, index, (edx & 0xFFFF_FFFF) << 32 | (eax & 0xFFFF_FFFF), site)
            if index in NATIVE_MSRS:
                if index == E.EFER:
                    self.efer = int(uc.msr_read(E.EFER))
                return
            self.native.tsc_offset = self.apic.tsc_offset & MASK64  # IA32_TSC / TSC_ADJUST move it
            if self.native.native_msr_count:
                self.traps.refresh_native_msrs()  # e.g. an MPERF write moves its offset
            self.clip_to_deadline()
            if isinstance(res, Fault):
                self.raise_exception(res.vector, res.error_code, site)
                return
        else:
            value = exits.msr_read(self, index, site)
            if value is None:  # an MSR the engine executed itself
                return
            if isinstance(value, Fault):
                self.raise_exception(value.vector, value.error_code, site)
                return
            if self.native_msr_on and index in NATIVE_READS:
                self.traps.enable_native_msr(index)  # offered and on record: vn_msr_done answers the next ones
            self.rax_rdx.write(value & 0xFFFF_FFFF, (value >> 32) & 0xFFFF_FFFF)
        self.after_exit()

    def after_exit(self) -> None:
        """At an instruction boundary inside a hook: deliver what became deliverable, honour stop requests."""
        if self.m.done:
            self.uc.emu_stop()
            return
        if self.idle or self.stop_requested:
            self.uc.emu_stop()
            return
        if D.has_interrupt(self):
            if self.interruptible():
                self.stop()  # the run loop injects it before the next instruction
            else:  # e.g. an EOI with IF = 0 unmasked one: open the window now, the IRET or STI is near
                self.traps.set_window(True)

    # -- exceptions and interrupts (viridian/machine/unicorn/vcpu_delivery.py) --------------------------------------
    def _interrupt(self, uc: Any, intno: int, _ud: Any) -> None:
        D.interrupt(self, uc, intno, _ud)

    def _enter(self, vector: int, error: int | None, rip: int) -> bool:
        return D.enter(self, vector, error, rip)

    def inject_pending(self) -> bool:
        return D.inject_pending(self)
