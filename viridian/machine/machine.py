"""The machine: guest RAM, the partition model, local APICs, vCPUs, the port bus; one partition.

Virtual time: one tick = one virtual TSC cycle. A vCPU's clock advances by the bytes of guest code it
executes (counted natively per translation block) plus EXIT_TICKS per exit, so the same guest and
configuration always produce the same exits. The scheduling loop (quanta, simulated physical CPUs, jumps to
the next deadline, "hung") is :class:`viridian.machine.host.Host`, which can run several machines at once.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from msr.arch import ARCH_MSRS, ArchMsrState
from msr.faults import Fault
from msr.registry import Bound, MsrChain
from msr.x2apic import X2APIC_MSRS
from viridian.abi.dispatch import HypercallOutcome
from viridian.abi.memory import BytesMemory
from viridian.abi.registers import HypercallRegisters
from viridian.clock import VirtualClock
from viridian.config.enlightenments import Enlightenments
from viridian.devices.apic_bus import ApicBus
from viridian.devices.fw_cfg import PORTS as FW_CFG_PORTS
from viridian.devices.fw_cfg import FwCfg
from viridian.errors import UserError
from viridian.machine import engines, exits
from viridian.machine import layout as L
from viridian.machine.boot import BootRegisters, boot_registers, build_gdt, build_page_tables, place_cmdline
from viridian.machine.host import MIN_SLICE
from viridian.machine.lifetime import note_built
from viridian.machine.loader import Image, place_image
from viridian.machine.multiboot import install as install_multiboot
from viridian.machine.negotiation import NegotiationLog
from viridian.machine.paging import PageWalker
from viridian.machine.pc_machine import BOARDS, attach_pc
from viridian.machine.ports import PortBus
from viridian.machine.ready import ReadySet
from viridian.machine.replay import WallClock
from viridian.machine.stats import VcpuStats, merge
from viridian.machine.stubs import hypercall_page
from viridian.partition.partition import Partition

if TYPE_CHECKING:
    from viridian.devices.pc_platform import PcPlatform
    from viridian.machine.backend import VcpuBackend as Vcpu
    from viridian.machine.eventlog import EventLog
    from viridian.machine.host import Host
    from viridian.partition.vp import Overlay

log = logging.getLogger(__name__)

QUANTUM = 200_000
KICK_TICKS = 2_000  # (1 us) a vCPU that kicks another runs on this long at most (an IPI's latency)


@dataclass
class RunResult:
    status: str  # exit | reset | crash | hung | timeout | error | triple-fault
    code: int | None = None
    vcpu: int | None = None
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class Machine:
    """One partition on the emulated host; :meth:`run` drives it to a :class:`RunResult`."""

    def __init__(self, config: Enlightenments, image: Image, *, vcpus: int = 1, mem_mib: int = 128,
                 max_ticks: int = 20_000_000_000, quantum: int = QUANTUM, pcpus: int | None = None,
                 tracer: Any = None, ple_gap: int = 128, ple_window: int = 4096, fast: bool = False,
                 ap_start: str = "entry", cmdline: str = "", board: str = "minimal",
                 engine: str = engines.DEFAULT) -> None:
        if ap_start not in ("entry", "sipi"):
            raise UserError(f"--ap-start {ap_start}: choose entry or sipi")
        if board not in BOARDS:
            raise UserError(f"--machine {board}: choose {' or '.join(BOARDS)}")
        if not 1 <= vcpus <= L.MAX_VCPUS:
            raise UserError(f"--vcpus {vcpus}: choose 1..{L.MAX_VCPUS}")
        size = mem_mib << 20
        if not mem_mib >= 2 or size > L.MAX_RAM:
            raise UserError(f"--mem {mem_mib}: choose 2..{L.MAX_RAM >> 20} MiB")
        if L.reserved_top(vcpus, size) <= L.IMAGE_MIN:
            raise UserError(f"--mem {mem_mib} MiB is too small for {vcpus} vCPU stacks; raise --mem")
        self.ram_size, self.vcpu_count = size, vcpus
        self._ram_map = mmap.mmap(-1, size)  # anonymous: zero pages on demand (ctypes arrays memset every byte)
        self.ram_buffer = (ctypes.c_ubyte * size).from_buffer(self._ram_map)
        self.ram = memoryview(self.ram_buffer).cast("B")
        self.memory = BytesMemory(self.ram)
        self.walker = PageWalker(self.ram, size)
        self.clock = VirtualClock()
        self.ready = ReadySet(self, vcpus)  # the scheduler's cached runnable set and deadlines (ready.py)
        self.bus = ApicBus.create(vcpus, self.clock, on_kick=self.kick, on_init=self._on_init,
                                  on_sipi=self._on_sipi, on_nmi=self._on_nmi)
        self.apics = list(self.bus)
        for apic in self.apics:  # the guest contract: software-enabled at entry
            apic.write_register(0xF0, 0x1FF)
        self.partition = Partition(config, self.memory, vp_count=vcpus, services=self, clock=self.clock,
                                   apics=self.apics, hypercall_code=hypercall_page(long_mode=True))
        self.arch = [ArchMsrState(i, self.apics[i], self.clock) for i in range(vcpus)]
        self.chains = [MsrChain([Bound(X2APIC_MSRS, vp), Bound(self.partition.msr_table, vp),
                                 Bound(ARCH_MSRS, self.arch[vp.index])]) for vp in self.partition.vps]
        self.ports = PortBus()
        self.ports.attach(FW_CFG_PORTS, FwCfg(size, vcpus))  # QEMU's fw_cfg (legacy I/O), as on -machine pc
        self.board = board  # "pc": PIC, PIT, I/O APIC... (viridian.machine.pc_machine); "minimal": none of them
        self.platform: PcPlatform | None = attach_pc(self) if board == "pc" else None
        self.image = image
        self.max_ticks, self.quantum = max_ticks, max(MIN_SLICE, quantum)
        self.pcpus = pcpus or vcpus
        self.tracer = tracer
        self.debugger: Any = None  # --gdb (viridian.machine.unicorn.debug.Debugger)
        self.ple_gap, self.ple_window = ple_gap, ple_window  # pause-loop exiting (0 window = off)
        self.result: RunResult | None = None
        self.stop_at: int | None = None  # --snapshot-at: the Host stops this partition once its time reaches it
        self.devices: dict[str, Any] = {}  # devices off the port bus, by name (snapshot_state.py: the protocol)
        self.host: Host | None = None  # set when a Host schedules this partition
        self.T = 0  # host time at the start of the current quantum
        self.fast = fast  # --fast: virtual time follows the wall clock (not deterministic)
        self._wall0 = time.perf_counter_ns()
        self._skipped = 0  # wall-clock mode: time jumped over while every vCPU was halted
        self.wall = WallClock()  # --fast readings of the host clock: recorded, or replayed (--replay)
        self.flushes = 0
        self.neg = NegotiationLog()  # first uses and outcomes: the negotiation report's raw material
        self.eventlog: EventLog | None = None  # diff-engines: slice ends and kicks, recorded or replayed (eventlog.py)
        build_page_tables(self.ram, size)
        place_image(image, self.ram, size, vcpus)
        place_cmdline(self.ram, cmdline)
        self.cmdline = cmdline
        self.zero_page: int | None = None
        if image.linux is not None:  # Linux 64-bit boot protocol: zero page, initrd, ACPI tables
            from viridian.machine.linux_boot import install

            self.zero_page = install(image.linux, self.ram, size, vcpus, cmdline, pc=self.platform is not None)
            from viridian.devices.cmos import DATA_PORT, INDEX_PORT, Cmos

            if self.platform is not None:  # the PC's RTC, with its IRQ 8 (viridian.devices.pc_timers)
                self.cmos = self.platform.timers.cmos
            else:
                self.cmos = Cmos(self.virtual_seconds)  # a bound method: snapshots pickle it by name
                self.ports.attach((INDEX_PORT, DATA_PORT), self.cmos)
            from viridian.machine.power import attach_acpi_sleep

            if self.platform is None:  # the HW-reduced FADT's sleep registers (linux_acpi.py): S5 ends the run
                attach_acpi_sleep(self)
        self.engine = engine  # which vCPU engine runs this partition (engines.py)
        vcpu_class = engines.vcpu_class(engine)
        self.engine_state: Any = engines.machine_state(engine, self)  # what its vCPUs share (None: nothing)
        self.vcpus: list[Vcpu] = []
        for i in range(vcpus):
            build_gdt(self.ram, i)
            regs = boot_registers(i, vcpus, image.entry, size)
            if self.zero_page is not None and i == 0:
                regs = self._linux_entry(regs)
            self.vcpus.append(vcpu_class(self, i, regs))
            if (ap_start == "sipi" or image.kind in ("multiboot", "linux")) and i > 0:
                self.vcpus[i].wait_sipi = True  # real-kernel style: APs wait for INIT-SIPI-SIPI
        if image.kind == "multiboot":  # vCPU 0 enters in 32-bit protected mode (Multiboot spec §3.2)
            mbi = install_multiboot(self.ram, size, image.path, image.end, cmdline, image.modules,
                                    L.reserved_top(vcpus, size))  # "IMAGE ARGS", modules (QEMU -initrd)
            self.vcpus[0].multiboot_entry = (image.entry, mbi)
        self.running: Vcpu | None = None
        self.slice_t0 = 0
        self.slice_b0 = 0
        if tracer is not None:
            tracer.attach(self)  # EOI and port detail for --trace (viridian.machine.trace)
        note_built(self)  # closed when an enclosing lifetime.machines_closed() ends (the CLI, fan-out cells)

    def _linux_entry(self, regs: BootRegisters) -> BootRegisters:
        """boot.rst "64-bit boot protocol": RSI = boot_params, CS = __BOOT_CS, DS/ES/SS = __BOOT_DS, IF = 0."""
        from dataclasses import replace

        from viridian.machine.linux_boot import BOOT_CS, BOOT_DS, build_boot_gdt

        build_boot_gdt(self.ram, regs.gdt, regs.tss)
        return replace(regs, rsi=self.zero_page or 0, rdi=0, rdx=0, rcx=0, cs=BOOT_CS, ds=BOOT_DS)

    def virtual_seconds(self) -> float:
        """Virtual time since the machine started, in seconds (the CMOS clock's source)."""
        return self.clock.tsc() / self.clock.tsc_hz

    # -- results ---------------------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.result is not None

    def finish(self, status: str, *, code: int | None = None, vcpu: int | None = None, detail: str = "",
               **extra: Any) -> None:
        if self.result is None:
            self.result = RunResult(status, code, vcpu, detail, extra)

    # -- time ------------------------------------------------------------------------------------------------
    def wall_ticks(self) -> int:
        live = (time.perf_counter_ns() - self._wall0) * self.clock.tsc_hz // 1_000_000_000 + self._skipped
        return self.wall.read(live)

    def sync_clock(self, v: Vcpu) -> None:
        if self.fast:
            now = self.wall_ticks()
            if now > self.clock.tsc():
                self.clock.set_tsc(now)
            return
        if v is self.running:
            now = self.slice_t0 + (v.ticks - self.slice_b0)
            if now > self.clock.tsc():
                self.clock.set_tsc(now)

    def poll_vcpu(self, v: Vcpu) -> None:
        self.sync_clock(v)  # the run loop's poll sees the running vCPU's time, not the last Python exit's
        if self.eventlog is not None and not self.eventlog.may_poll(v):
            return
        self.apics[v.index].poll()
        self.partition.poll(v.index)
        if self.platform is not None:
            self.platform.poll()
        if self.running is v:  # a periodic timer that fell due re-armed itself: the run stops there too (host.py)
            v.clip_to_deadline()

    def next_deadline(self) -> int | None:
        best: int | None = None
        for v in self.vcpus:
            d = self.apics[v.index].next_deadline_tsc()
            ref = self.partition.poll(v.index)
            if ref is not None:
                t = self.clock.tsc_for_ref_time(ref)
                d = t if d is None else min(d, t)
            if d is not None and (best is None or d < best):
                best = d
        if self.platform is not None and (d := self.platform.next_deadline()) is not None:
            best = d if best is None else min(best, d)
        return best

    # -- scheduling (the loop itself is viridian.machine.host.Host) --------------------------------------------
    def run(self) -> RunResult:
        """Run this partition alone on ``pcpus`` simulated CPUs (see :class:`~viridian.machine.host.Host`)."""
        from viridian.machine.host import Host

        return Host([self], self.pcpus).run()[0]

    def close(self) -> None:
        """End of life: every vCPU's engine closed first (unicorn/teardown.py), so RAM, maps and native state
        are plain garbage afterwards. Results, stats and serial output stay readable; registers and RAM do not.
        Idempotent. ``with Machine(...) as m:`` closes on leaving the block."""
        for v in self.vcpus:
            v.close()

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def skip_to(self, deadline: int) -> None:
        """Nothing runnable anywhere: host time jumps to ``deadline``."""
        if self.fast:
            self._skipped += max(0, deadline - self.wall_ticks())
        self.T = max(self.T, deadline, self.clock.tsc())
        self.clock.set_tsc(self.T)

    def end_quantum(self, end: int) -> int:
        """The quantum ends at host time ``end`` (or later, if a vCPU overshot); returns this partition's time."""
        self.T = max(end, self.clock.tsc())
        if self.fast:
            self.T = max(self.clock.tsc(), self.wall_ticks())
        self.clock.set_tsc(self.T)
        return self.T

    def run_vcpu(self, v: Vcpu, host_t: int, offset: int, budget: int) -> int:
        self.T = max(self.T, host_t)
        self.running, self.slice_t0, self.slice_b0 = v, host_t + offset, v.ticks
        self.clock.set_tsc(max(self.clock.tsc(), self.slice_t0))
        if self.eventlog is not None:
            budget = self.eventlog.slice_start(v, self.slice_t0, budget)
        try:
            return v.run(budget) if self.eventlog is None else self.eventlog.run_slice(v, budget)
        finally:
            self.running = None
            self.sync_code(v)
            if self.eventlog is not None:
                self.eventlog.slice_end(v)
            if self.debugger is not None:  # --gdb: a stop is served here, nothing runs meanwhile (debug.py)
                self.debugger.after_slice(v)
                self.ready.invalidate()  # the debugger may have changed any vCPU
            self.ready.mark(v.index)

    def sync_code(self, v: Vcpu, slice_end: bool = True) -> None:
        """After a slice (or a store into code inside one): the engine keeps its vCPUs' code coherent
        (engine_state.sync_code; nothing for an engine with one translation cache)."""
        if self.engine_state is not None:
            self.engine_state.sync_code(v, slice_end)

    # -- model entry points (exits.py: what an exit means, for every engine) -----------------------------------
    def rdmsr(self, v: Vcpu, index: int) -> int | Fault:
        return exits.model_rdmsr(self, v, index)

    def wrmsr(self, v: Vcpu, index: int, value: int) -> Fault | None:
        return exits.model_wrmsr(self, v, index, value)

    def update_fast_paths(self) -> None:
        """Whether fast NotifyLongSpinWait may complete natively: offered, hypercalls enabled, no yield possible
        (a CPU per vCPU), and no trace (which must see every exit)."""
        from viridian.partition.hypercalls.spin import spin_notify_offered

        host = self.host
        no_yield = host.pcpus >= host.vcpu_count if host is not None else self.pcpus >= self.vcpu_count
        ok = self.tracer is None and no_yield and self.partition.hypercalls_enabled() \
            and self.neg.used("hypercall", 0x0008)
        for v in self.vcpus:
            v.set_fast_spin(ok and spin_notify_offered(v.vp))

    def hypercall(self, v: Vcpu, regs: HypercallRegisters) -> HypercallOutcome:
        return exits.model_hypercall(self, v, regs)

    # -- MachineServices (viridian.partition.services) ------------------------------------------------------
    def flush_tlb(self, source_vp: int, targets: Any, gvas: Any) -> None:
        for t in targets:
            if 0 <= t < len(self.vcpus):
                self.vcpus[t].flush_tlb()
                self.flushes += 1

    def send_ipi(self, source_vp: int, target_vp: int, vector: int) -> None:
        if 0 <= target_vp < len(self.vcpus):
            self.vcpus[source_vp].stats.ipis_sent += 1
            self.apics[target_vp].assert_interrupt(vector)

    def yield_vp(self, vp: int, reason: str) -> None:
        # KVM kvm_vcpu_on_spin: only worth it when another vCPU waits for a (simulated) physical CPU
        v = self.vcpus[vp]
        v.stats.events[reason] += 1
        host = self.host
        waiting = host.waiting_for_cpu(v) if host is not None else 0
        if host is not None and waiting >= host.pcpus:
            v.stats.events["yield"] += 1
            v.yield_pending = True
            v.stop()

    def request_reset(self, vp: int) -> None:
        self.finish("reset", vcpu=vp, detail="HV_X64_MSR_RESET written")
        self.vcpus[vp].stop()

    def notify_crash(self, vp: int, params: tuple[int, int, int, int, int], message: bytes | None) -> None:
        text = message.decode("utf-8", errors="replace").rstrip("\0") if message else ""
        self.finish("crash", vcpu=vp, detail=text, params=[f"{p:#x}" for p in params])
        self.vcpus[vp].stop()

    def kick(self, vp: int) -> None:
        self.ready.mark(vp)
        v = self.running
        if self.eventlog is not None:
            self.eventlog.kick(vp, v)
        if v is not None and v.index == vp:
            v.stop_requested = True  # deliver before more guest code runs
        elif v is not None and 0 <= vp < len(self.vcpus) and not self.vcpus[vp].wait_sipi:
            # another vCPU gained an event: KVM kicks it onto its CPU at once; here the sender's run ends
            # KICK_TICKS later and the next quantum runs the target first (Host: KICK_QUANTUM), so the target
            # answers within a bounded virtual time however many vCPUs wait (deterministic: virtual ticks)
            v.end_run_within(KICK_TICKS)

    def _on_init(self, vp: int) -> None:
        """INIT IPI (SDM §8.4.4): the target waits for a SIPI (its APIC was reset by the bus)."""
        v = self.vcpus[vp]
        v.wait_sipi, v.halted, v.idle, v.sipi_vector = True, False, False, None
        self.ready.mark(vp)
        v.stats.events["init"] += 1
        if self.running is v:
            v.stop_requested = True

    def _on_nmi(self, vp: int) -> None:
        v = self.vcpus[vp]
        self.ready.mark(vp)
        v.nmi_pending = True
        if self.running is v:
            v.stop_requested = True

    def _on_sipi(self, vp: int, vector: int) -> None:
        """Start-up IPI: ignored unless the target is waiting for one (a second SIPI is a no-op)."""
        v = self.vcpus[vp]
        if v.wait_sipi:
            v.wait_sipi, v.sipi_vector = False, vector
        self.ready.mark(vp)

    def overlays_changed(self, before: list[Overlay], after: list[Overlay]) -> None:
        """The model moved or rewrote overlay pages: code that moved (the hypercall page at a new GPA) is
        dropped from every vCPU's translations; read-only overlays are write-protected (TLFS §3.13)."""
        moved = {o.gpa for o in after if o.kind == "hypercall"} - {o.gpa for o in before if o.kind == "hypercall"}
        if moved:
            for other in self.vcpus:
                other.forget_code()
        pages = {o.gpa for o in after if not o.writable}
        for other in self.vcpus:
            other.set_protected(pages)

    def enter_idle(self, vp: int) -> None:
        v = self.vcpus[vp]
        v.idle = True
        v.stats.events["guest_idle"] += 1

    # -- reporting --------------------------------------------------------------------------------------------
    def disassemble(self, v: Vcpu, rip: int) -> str:
        return v.describe_instruction(rip)

    def total_stats(self) -> VcpuStats:
        return merge([v.stats for v in self.vcpus])
