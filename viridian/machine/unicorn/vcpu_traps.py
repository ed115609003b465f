"""The vCPU traps that answer one instruction each: hypercalls (page stub and VMCALL/VMMCALL), CPUID,
RDTSC/RDTSCP, port I/O and xAPIC MMIO. Mixed into :class:`~viridian.machine.unicorn.vcpu.Vcpu`, whose state they use."""

from __future__ import annotations

import ctypes
import traceback
from typing import TYPE_CHECKING, Any

from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

from viridian.abi.registers import HypercallRegisters
from viridian.machine import exits
from viridian.machine.unicorn import engine as E
from viridian.machine.unicorn import vcpu_io
from viridian.machine.unicorn.native import MSR_REFERENCE, MSR_TSC_OFFSET
from viridian.partition.cpuid import CpuidRegs
from viridian.tlfs.msrs import HvMsr

if TYPE_CHECKING:
    from viridian.machine.unicorn.vcpu import Vcpu

VMCALL, VMMCALL = b"\x0f\x01\xc1", b"\x0f\x01\xd9"


class _Msr(ctypes.Structure):
    _fields_ = [("rid", ctypes.c_uint32), ("value", ctypes.c_uint64)]  # uc_x86_msr


class MsrReg:
    """One MSR the engine keeps (e.g. IA32_TSC_AUX) read with a raw libunicorn call (the binding's msr_read
    costs ~20 us: too much for an exit hot path)."""

    def __init__(self, uc: Any, index: int) -> None:
        self._uch, self._v = uc._uch, _Msr(index, 0)
        self._ptr = ctypes.byref(self._v)

    def read(self) -> int:
        uclib.uc_reg_read(self._uch, X.UC_X86_REG_MSR, self._ptr)
        return int(self._v.value)


MASK64 = (1 << 64) - 1
# RDMSRs vn_msr_done answers once the model has answered one (TLFS §12.4; SDM vol. 4 IA32_MPERF/APERF)
NATIVE_READS = {int(HvMsr.TIME_REF_COUNT): MSR_REFERENCE, 0xE7: MSR_TSC_OFFSET, 0xE8: MSR_TSC_OFFSET}


class InstructionTraps:
    """Handlers for the traps of one vCPU (``v``)."""

    def __init__(self, v: Vcpu) -> None:
        self.v = v
        self._rdtscp_regs: E.FastRegs | None = None  # made on first use (the vCPU's engine comes later)
        self._tsc_aux: MsrReg | None = None
        self._disabled_page = bytearray(b"\xff" * 0x1000)  # the xAPIC page while the APIC is disabled

    # -- hypercalls -----------------------------------------------------------------------------------------
    def _hypercall_regs(self) -> HypercallRegisters:
        fr = self.v.hc_regs
        vals = fr.read()
        rax, rbx, rcx, rdx, rsi, rdi, r8 = vals[:7]
        cs, cr0 = vals[13], vals[14]
        long_mode = bool(self.v.efer & 0x400)  # EFER.LMA; CS.L is 1 in our GDTs (no compatibility mode)
        return HypercallRegisters(long_mode=long_mode, cpl=cs & 3, protected=bool(cr0 & 1), rax=rax, rbx=rbx,
                                  rcx=rcx, rdx=rdx, rsi=rsi, rdi=rdi, r8=r8,
                                  xmm=fr.read_wide(7, 6))

    def _hypercall(self, rip: int) -> tuple[bool, bool]:
        """Run the hypercall (exits.hypercall); returns (handled without fault, continued)."""
        outcome = exits.hypercall(self.v, self._hypercall_regs())
        if outcome.fault is not None:
            self.v.raise_exception(outcome.fault.vector, outcome.fault.error_code, rip)
            return False, False
        regs_out = outcome.registers
        if len(regs_out) == 1 and "rax" in regs_out:
            self.v.rax_reg.write(regs_out["rax"])
        elif regs_out:
            self.v.uc.reg_write_batch([(E.REG_BY_NAME[k], v) for k, v in regs_out.items()])
        return True, outcome.continued

    def on_stub_call(self, uc: Any, address: int, size: int, _ud: Any) -> None:
        """The hook inside our hypercall page: RAX left at -1 makes the stub fall back to its VMCALL."""
        if self.v.native.fast_done_at == address:  # completed by the native hook just before
            self.v.native.fast_done_at = 0
            return
        if self.v.resume_at == address:  # stopped inside this hook last time: the call is already done
            self.v.resume_at = None
            return
        ok, continued = self._hypercall(address)
        if self.v.stop_requested or self.v.m.done or self.v.pending_exc is not None:
            self.v.resume_at = address
        if ok and not continued:
            self.v.after_exit()

    def on_invalid(self, uc: Any, _ud: Any) -> bool:
        rip = uc.reg_read(X.UC_X86_REG_RIP)
        insn = self.v.read_virtual(rip, 3)
        if insn in (VMCALL, VMMCALL):
            ok, continued = self._hypercall(rip)
            if ok and not continued:
                self.v.next_rip = rip + 3
            self.v.stop()
            return True
        self.v.raise_exception(6, None, rip, count_exit=True)
        return True

    # -- other traps ------------------------------------------------------------------------------------------
    def on_cpuid(self, uc: Any, _ud: Any) -> int:
        """SDM vol. 2A "CPUID": EAX/EBX/ECX/EDX = the leaf (upper halves cleared); raw batch calls, 1 = the
        engine does not execute it."""
        regs = self.v.cpuid_regs
        leaf, sub = regs.read()[:2]
        r = self.cpuid_leaf(leaf & 0xFFFF_FFFF, sub & 0xFFFF_FFFF)
        regs.write(r.eax, r.ecx, r.ebx, r.edx)
        return 1

    def cpuid_leaf(self, leaf: int, sub: int) -> CpuidRegs:
        """One CPUID exit (SDM vol. 2A "CPUID"; TLFS §2.4 for 0x40000000+): the partition's leaf or the base
        CPU's, accounted and recorded (exits.cpuid). Also the answer for the 16/32-bit instances of
        realmode.py."""
        return exits.cpuid(self.v, leaf, sub)

    def _tsc(self) -> int:
        self.v.m.sync_clock(self.v)
        return self.v.m.arch[self.v.index].guest_tsc()

    def arm_native_tsc(self) -> None:
        """What vn_rdtsc (csrc) needs to answer as :meth:`_rdtsc` would: partition time = bytes + base (at
        least the clock), plus this vCPU's TSC offset."""
        v = self.v
        n, m = v.native, v.m
        if m.running is v:
            n.tsc_base = (m.slice_t0 - m.slice_b0) & MASK64
        else:
            n.tsc_base = (m.clock.tsc() - int(n.bytes)) & MASK64
        n.tsc_floor = m.clock.tsc() & MASK64
        n.tsc_offset = v.apic.tsc_offset & MASK64
        self.refresh_native_msrs()

    def enable_native_msr(self, index: int) -> None:
        """Let vn_msr_done answer RDMSR ``index`` (one of NATIVE_READS) from now on."""
        n = self.v.native
        used = int(n.native_msr_count)
        if used >= len(n.native_msrs) or any(n.native_msrs[i].index == index for i in range(used)):
            return
        e = n.native_msrs[used]
        e.index, e.kind, e.reads = index, NATIVE_READS[index], 0
        n.native_msr_count = used + 1
        self.refresh_native_msrs()

    def refresh_native_msrs(self) -> None:
        """The model's current constants behind the native answers (before each run, after MSR writes)."""
        n, m = self.v.native, self.v.m
        n.ref_scale = m.partition.time.scale & MASK64  # TIME_REF_COUNT (reftime.page_time)
        n.ref_offset = m.partition.time.offset & MASK64
        arch = m.arch[self.v.index]
        for i in range(int(n.native_msr_count)):
            e = n.native_msrs[i]
            if e.index in (0xE7, 0xE8):  # msr/arch.py: partition TSC + the MSR's offset
                e.offset = (arch.mperf_offset if e.index == 0xE7 else arch.aperf_offset) & MASK64

    def collect_native_tsc(self) -> None:
        """Account the reads vn_rdtsc(p) and vn_msr_done (NATIVE_READS) answered as exits and bring the
        partition clock up to the last one."""
        n, m = self.v.native, self.v.m
        k, n.rdtsc_count = int(n.rdtsc_count), 0
        if k:
            self.v.stats.by_reason["rdtsc"] += k
        if n.native_reads:
            r, n.native_reads = int(n.native_reads), 0
            self.v.stats.by_reason["msr_read"] += r
            for i in range(int(n.native_msr_count)):
                e = n.native_msrs[i]
                if e.reads:
                    self.v.stats.msr_reads[int(e.index)] += int(e.reads)
                    e.reads = 0
        m.clock.catch_up(int(n.tsc_floor))

    def on_rdtsc(self, uc: Any, _ud: Any) -> int:
        """SDM vol. 2B "RDTSC": EDX:EAX = the vCPU's TSC (upper halves of RAX/RDX cleared). Raw batch writes:
        a Linux AP calibrating its delay loop reads the TSC ~150,000 times."""
        self.v.count_exit("rdtsc")
        t = self._tsc()
        self.v.rax_rdx.write(t & 0xFFFF_FFFF, (t >> 32) & 0xFFFF_FFFF)
        return 1

    def on_rdtscp(self, uc: Any, _ud: Any) -> int:
        """SDM vol. 2B "RDTSCP": as RDTSC, and ECX = IA32_TSC_AUX[31:0] (the guest writes it natively)."""
        self.v.count_exit("rdtsc")
        t = self._tsc()
        if self._rdtscp_regs is None:
            self._rdtscp_regs = E.FastRegs(uc, (X.UC_X86_REG_RAX, X.UC_X86_REG_RDX, X.UC_X86_REG_RCX))
            self._tsc_aux = MsrReg(uc, 0xC000_0103)
        assert self._tsc_aux is not None
        self._rdtscp_regs.write(t & 0xFFFF_FFFF, (t >> 32) & 0xFFFF_FFFF, self._tsc_aux.read() & 0xFFFF_FFFF)
        return 1

    def on_in(self, uc: Any, port: int, size: int, _ud: Any) -> int:
        vcpu_io.collect(self.v)  # what vn_in/vn_out answered so far comes first
        return exits.port_in(self.v, port, size)

    def on_out(self, uc: Any, port: int, size: int, value: int, _ud: Any) -> None:
        vcpu_io.collect(self.v)
        exits.port_out(self.v, port, size, value)  # a PC device may have raised an interrupt or armed a timer
        vcpu_io.arm(self.v)  # LCR.DLAB may have changed

    def on_mmio_read(self, uc: Any, offset: int, size: int, _ud: Any) -> int:
        try:
            return exits.apic_read(self.v, offset, size, self._disabled_page)
        except Exception as exc:
            self.v.m.finish("error", vcpu=self.v.index, detail=f"host error in APIC read: {exc!r}",
                          traceback=traceback.format_exc())
            uc.emu_stop()
            return 0

    def on_mmio_write(self, uc: Any, offset: int, size: int, value: int, _ud: Any) -> None:
        try:
            reg = exits.apic_write(self.v, offset, size, value, self._disabled_page)
            if reg is None:
                return
            if self.v.native.native_msr_count:
                self.refresh_native_msrs()  # a self-INIT resets the MPERF/APERF offsets
            exits.after_apic_write(self.v, reg)  # re-evaluate at the next block start; timer deadlines
        except Exception as exc:
            self.v.m.finish("error", vcpu=self.v.index, detail=f"host error in APIC write: {exc!r}",
                          traceback=traceback.format_exc())
            uc.emu_stop()

    def cr8_done(self, uc: Any, address: int, size: int, _ud: Any) -> None:
        """After MOV to/from CR8: Unicorn keeps CR8 apart from our APIC (reads give 0), so the machine
        performs the access on the APIC TPR (SDM §10.8.6.1; on hardware the TPR shadow makes it exit-free,
        so it is counted as an event, not an exit)."""
        site = int(self.v.native.pending_site)
        if address - site != 4 or site not in self.v.cr8_sites:
            return
        self.v.native.pending_site = 0
        is_write, reg = self.v.cr8_sites[site]
        if is_write:
            self.v.stats.events["cr8_write"] += 1
            self.v.m.neg.record_event(self.v.index, self.v.m.clock.tsc(), "cr8_write")
            value = int(uc.reg_read(reg)) & 0xF
            self.v.apic.set_tpr(value << 4)
            self.v.after_exit()  # a lower TPR may unblock a pending interrupt
        else:
            self.v.stats.events["cr8_read"] += 1
            self.v.m.neg.record_event(self.v.index, self.v.m.clock.tsc(), "cr8_read")
            uc.reg_write(reg, self.v.apic.get_tpr() >> 4)

    # -- interrupt window (VMX "interrupt-window exiting") ---------------------------------------------------
    def set_window(self, blocked_interrupt: bool) -> None:
        """VMX interrupt-window exiting: while an interrupt is pending but RFLAGS.IF = 0 (or the STI shadow is
        active), vn_block checks every block start natively and stops the engine at the first one that can
        take it (window_block in vcpu_native.c; a block starting in the STI shadow is that one instruction)."""
        v, n = self.v, self.v.native
        if blocked_interrupt and not n.window_active:
            v.stats.exit("interrupt_window")
            rflags = v.uc.reg_read(X.UC_X86_REG_RFLAGS)
            n.window_shadow = int(v.in_sti_shadow())
            n.window_prev_if = int(bool(rflags & 0x200))
            n.window_first, n.window_active, n.hot = 1, 1, 0  # every block start through window_block
        elif not blocked_interrupt:
            n.window_active = 0
