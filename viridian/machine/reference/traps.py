"""The reference engine's exits: CPUID, RDTSC(P), port I/O, xAPIC MMIO, RDMSR/WRMSR and MOV CR8 sites, hypercalls
(our page's stub and VMCALL/VMMCALL), SYSCALL, stores into read-only overlays. Each handler mirrors what the fast
engine's Python path does (viridian/machine/unicorn/vcpu_traps.py, vcpu.py) so both give the same exits, in the
same order, at the same virtual times; none writes RIP (a deferred redirect is applied by the run loop)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from unicorn import UcError
from unicorn import x86_const as X

from msr.faults import Fault
from viridian.abi.registers import HypercallRegisters
from viridian.machine.cpuid_base import base_leaf
from viridian.machine.reference import events as EV
from viridian.machine.reference.regs import RegSet, ids
from viridian.partition.cpuid import CpuidRegs

if TYPE_CHECKING:
    from viridian.machine.reference.vcpu import Vcpu

VMCALL, VMMCALL = b"\x0f\x01\xc1", b"\x0f\x01\xd9"
EFER = 0xC000_0080
_CPUID = RegSet(ids("rax", "rcx", "rbx", "rdx"))
_RAX_RDX = RegSet(ids("rax", "rdx"))
_RAX_RDX_RCX = RegSet(ids("rax", "rdx", "rcx"))
_MSR = RegSet(ids("rcx", "rax", "rdx"))
_XMM = tuple(getattr(X, f"UC_X86_REG_XMM{i}") for i in range(6))
_HC = RegSet((*ids("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "r8"), *_XMM, *ids("cs", "cr0")))
_GPR_IDS = ids("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
               "r14", "r15")
_BY_NAME = {"rax": 0, "rcx": 1, "rdx": 2, "rbx": 3, "rsi": 6, "rdi": 7, "r8": 8}


def cpuid(v: Vcpu) -> int:
    """SDM vol. 2A "CPUID": EAX/EBX/ECX/EDX = the leaf; 1 = the engine does not execute it."""
    rax, rcx = _CPUID.read(v.eng.h)[:2]
    r = cpuid_leaf(v, rax & 0xFFFF_FFFF, rcx & 0xFFFF_FFFF)
    _CPUID.write(v.eng.h, (r.eax, r.ecx, r.ebx, r.edx))
    return 1


def cpuid_leaf(v: Vcpu, leaf: int, sub: int) -> CpuidRegs:
    """One CPUID exit (TLFS §2.4 for 0x40000000+): the partition's leaf or the base CPU's."""
    v.count_exit("cpuid")
    m = v.m
    m.neg.record_cpuid(v.index, m.clock.tsc(), leaf)
    r = m.partition.cpuid(leaf, sub)
    if r is None:
        arch = m.arch[v.index]
        r = base_leaf(leaf, sub, v.apic.apic_id, m.vcpu_count,
                      invariant_tsc=not m.partition.invariant_tsc_suppressed(), limit_maxval=arch.limit_cpuid_maxval)
        if leaf == 1:  # CPUID.1:EDX[9]: present while IA32_APIC_BASE[11] enables the APIC (SDM vol. 3 §10.4.3)
            r = type(r)(r.eax, r.ebx, r.ecx, r.edx & ~(1 << 9) | (1 << 9 if v.apic.hw_enabled else 0))
    return r


def rdtsc(v: Vcpu, rdtscp: bool) -> int:
    """SDM vol. 2B "RDTSC"/"RDTSCP": EDX:EAX = the vCPU's TSC (RDTSCP: ECX = IA32_TSC_AUX[31:0])."""
    v.count_exit("rdtsc")
    v.m.sync_clock(v)
    t = v.m.arch[v.index].guest_tsc()
    if rdtscp:
        aux = int(v.eng.uc.msr_read(0xC000_0103))
        _RAX_RDX_RCX.write(v.eng.h, (t & 0xFFFF_FFFF, (t >> 32) & 0xFFFF_FFFF, aux & 0xFFFF_FFFF))
    else:
        _RAX_RDX.write(v.eng.h, (t & 0xFFFF_FFFF, (t >> 32) & 0xFFFF_FFFF))
    return 1


def after_platform_access(v: Vcpu, write: bool = True) -> None:
    """After an access to a PC device: re-evaluate interrupts at the next block start if one may have become
    pending; after a write, end the run at the deadline it may have armed (as pc_machine.after_access)."""
    p = v.m.platform
    if p is None:
        return
    changed = p.take_changed()
    if changed:
        v.recheck_at_next_block()
    if changed or write:
        v.clip_to_deadline()


def port_in(v: Vcpu, port: int, size: int) -> int:
    v.count_exit("io")
    v.stats.ports[port] += 1
    p = v.m.platform
    if p is None:
        return int(v.m.ports.read(port, size))
    p.sync(v.m.ports.device(port))  # timed PC devices up to now first
    value = int(v.m.ports.read(port, size))
    after_platform_access(v, write=False)
    return value


def port_out(v: Vcpu, port: int, size: int, value: int) -> None:
    v.count_exit("io")
    v.stats.ports[port] += 1
    p = v.m.platform
    if p is not None:
        p.sync(v.m.ports.device(port))
    v.m.ports.write(port, size, value)
    if p is not None:
        after_platform_access(v)


def apic_read(v: Vcpu, offset: int, size: int) -> int:
    """xAPIC MMIO read (SDM vol. 3 §10.4.1); a disabled APIC answers all-ones (§10.4.3), x2APIC mode too."""
    v.count_exit("mmio")
    v.vp.assist.retire_lazy_eoi()  # settle NoEoiRequired at the exit (KVM: PV EOI synced per exit)
    if not v.apic.hw_enabled:
        return int.from_bytes(_disabled_page(v)[offset:offset + size], "little")
    reg = offset & ~0xF
    v.stats.apic_access(reg, via_msr=False)
    v.m.neg.record_mmio(v.index, v.m.clock.tsc(), reg, False)
    if v.apic.x2apic:
        return 0xFFFF_FFFF
    value = v.apic.read_register(reg) if offset & 0xF < 4 else 0
    return int((value >> (8 * (offset & 3))) & ((1 << (8 * size)) - 1))


def apic_write(v: Vcpu, offset: int, size: int, value: int) -> None:
    v.count_exit("mmio")
    v.vp.assist.retire_lazy_eoi()
    if not v.apic.hw_enabled:  # plain memory then, as on KVM
        _disabled_page(v)[offset:offset + size] = (value & ((1 << 8 * size) - 1)).to_bytes(size, "little")
        return
    reg = offset & ~0xF
    v.stats.apic_access(reg, via_msr=False)
    v.m.neg.record_mmio(v.index, v.m.clock.tsc(), reg, True)
    if v.apic.x2apic or offset & 0xF:
        return
    v.apic.write_register(reg, value & 0xFFFF_FFFF)
    if reg in (0x300, 0xB0, 0x80, 0xF0, 0x320, 0x380):
        v.recheck_at_next_block()  # stopping here would re-run the MMIO write
    if reg in (0x320, 0x380, 0x3E0):
        v.clip_to_deadline()


def _disabled_page(v: Vcpu) -> bytearray:
    """The xAPIC page while the APIC is disabled: plain memory, all-ones until written (as on KVM)."""
    if v.disabled_page is None:
        v.disabled_page = bytearray(b"\xff" * 0x1000)
    return v.disabled_page


# -- MSR and CR8 sites (the engine executed the instruction as a no-op or its own; the model answers) -----------
def msr_done(v: Vcpu, address: int) -> None:
    site = v.pending_site
    if site not in v.eng.sites:
        return
    v.pending_site = 0
    ecx, eax, edx = _MSR.read(v.eng.h)
    index = ecx & 0xFFFF_FFFF
    m, neg = v.m, v.m.neg
    if v.eng.sites[site]:
        v.count_exit("msr_write", site)
        v.stats.msr_writes[index] += 1
        value = (edx & 0xFFFF_FFFF) << 32 | (eax & 0xFFFF_FFFF)
        if index in v.engine_msrs:
            neg.record_msr(v.index, m.clock.tsc(), index, True, value, None)
            if index == EFER:
                v.efer = int(v.eng.uc.msr_read(EFER))
            return
        res = m.wrmsr(v, index, value)
        v.clip_to_deadline()
        neg.record_msr(v.index, m.clock.tsc(), index, True, value, res.vector if isinstance(res, Fault) else None)
        if isinstance(res, Fault):
            EV.raise_exception(v, res.vector, res.error_code, site)
            return
    else:
        v.count_exit("msr_read", site)
        v.stats.msr_reads[index] += 1
        if index in v.engine_msrs:
            neg.record_msr(v.index, m.clock.tsc(), index, False, 0, None)
            return
        got = m.rdmsr(v, index)
        if isinstance(got, Fault):
            neg.record_msr(v.index, m.clock.tsc(), index, False, 0, got.vector)
            EV.raise_exception(v, got.vector, got.error_code, site)
            return
        if ("rdmsr", index) not in neg.first:
            neg.record_msr(v.index, m.clock.tsc(), index, False, 0, None)
        _RAX_RDX.write(v.eng.h, (got & 0xFFFF_FFFF, (got >> 32) & 0xFFFF_FFFF))
    after_exit(v)


def cr8_done(v: Vcpu, address: int) -> None:
    """After MOV to/from CR8: the engine keeps CR8 apart from the APIC, so the access is performed on the TPR
    (SDM §10.8.6.1; counted as an event: hardware's TPR shadow makes it exit-free)."""
    site = v.pending_site
    if site not in v.eng.cr8_sites:
        return
    v.pending_site = 0
    is_write, gpr = v.eng.cr8_sites[site]
    reg = _GPR_IDS[gpr]
    if is_write:
        v.stats.events["cr8_write"] += 1
        v.m.neg.record_event(v.index, v.m.clock.tsc(), "cr8_write")
        v.apic.set_tpr((int(v.eng.uc.reg_read(reg)) & 0xF) << 4)
        after_exit(v)  # a lower TPR may unblock a pending interrupt
    else:
        v.stats.events["cr8_read"] += 1
        v.m.neg.record_event(v.index, v.m.clock.tsc(), "cr8_read")
        v.eng.uc.reg_write(reg, v.apic.get_tpr() >> 4)


def after_exit(v: Vcpu) -> None:
    """At an instruction boundary inside a hook: deliver what became deliverable, honour stop requests."""
    if v.m.done or v.idle or v.stop_requested:
        v.eng.uc.emu_stop()
        return
    if EV.has_interrupt(v):
        if EV.interruptible(v):
            v.stop()  # the run loop injects it before the next instruction
        else:  # e.g. an EOI with IF = 0 unmasked one: open the window now
            EV.set_window(v, True)


# -- hypercalls ---------------------------------------------------------------------------------------------------
def _hypercall_regs(v: Vcpu) -> HypercallRegisters:
    vals = _HC.read(v.eng.h)
    rax, rbx, rcx, rdx, rsi, rdi, r8 = vals[:7]
    cs, cr0 = vals[13], vals[14]
    return HypercallRegisters(long_mode=bool(v.efer & 0x400), cpl=cs & 3, protected=bool(cr0 & 1), rax=rax,
                              rbx=rbx, rcx=rcx, rdx=rdx, rsi=rsi, rdi=rdi, r8=r8, xmm=_HC.wide(7, 6))


def hypercall(v: Vcpu, rip: int) -> tuple[bool, bool]:
    """Run the hypercall (TLFS §3); returns (handled without fault, continued)."""
    v.count_exit("hypercall")
    outcome = v.m.hypercall(v, _hypercall_regs(v))
    v.stats.hypercalls[outcome.code] += 1
    result = (f"#{'UD' if outcome.fault.vector == 6 else outcome.fault.vector}" if outcome.fault is not None
              else outcome.status.name if outcome.status is not None else "?")
    v.m.neg.record_hypercall(v.index, v.m.clock.tsc(), outcome.code, result)
    if outcome.fault is not None:
        EV.raise_exception(v, outcome.fault.vector, outcome.fault.error_code, rip)
        return False, False
    out = outcome.registers
    for name, value in out.items():
        if name.startswith("xmm"):
            v.eng.uc.reg_write(_XMM[int(name[3:])], value)
        else:
            v.eng.uc.reg_write(_GPR_IDS[_BY_NAME[name]], value)
    return True, outcome.continued


def stub_call(v: Vcpu, address: int) -> None:
    """The hook inside our hypercall page (stubs.py): RAX left at -1 makes the stub fall back to its VMCALL."""
    if v.resume_at == address:  # stopped inside this hook last time: the call is already done
        v.resume_at = None
        return
    if v.read_virtual(address - 7, 7) != b"\x48\xc7\xc0\xff\xff\xff\xff":
        return  # the page was rewritten: not our stub any more
    ok, continued = hypercall(v, address)
    if v.stop_requested or v.m.done or v.pending_exc is not None:
        v.resume_at = address
    if ok and not continued:
        after_exit(v)


def invalid(v: Vcpu) -> bool:
    """#UD from the engine: VMCALL/VMMCALL is a hypercall (RIP moved past it by the run loop), else #UD."""
    rip = int(v.eng.uc.reg_read(X.UC_X86_REG_RIP))
    if v.read_virtual(rip, 3) in (VMCALL, VMMCALL):
        ok, continued = hypercall(v, rip)
        if ok and not continued:
            v.next_rip = rip + 3
        v.stop()
        return True
    EV.raise_exception(v, 6, None, rip, count_exit=True)
    return True


def syscall(v: Vcpu) -> None:
    v.syscall = True  # the engine stepped over it (its helper only calls hooks): the run loop performs it
    v.eng.uc.emu_stop()


def write_protected(v: Vcpu, address: int) -> bool:
    v.wp_fault = address
    return False  # the engine stops at the storing instruction; the run loop raises #GP


def describe(v: Vcpu, rip: int) -> str:
    data = v.read_virtual(rip, 16) or b""
    import capstone

    for insn in capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64).disasm(data, rip):
        return f"{insn.address:#x}: {insn.mnemonic} {insn.op_str}".strip()
    return f"{rip:#x}: " + (data[:8].hex(" ") if data else "<not mapped>")


def engine_error(v: Vcpu, exc: UcError) -> None:
    from viridian.machine.reference.arch import fetch_fault

    if fetch_fault(v, exc):  # a fetch outside RAM: #UD (arch.py)
        return
    rip = int(v.eng.uc.reg_read(X.UC_X86_REG_RIP))
    v.m.finish("error", vcpu=v.index, detail=f"engine error at {rip:#x}: {exc}", disasm=describe(v, rip))


HANDLERS: dict[str, Callable[..., Any]] = {
    "interrupt": lambda v, intno: EV.interrupt(v, intno), "cpuid": cpuid, "rdtsc": rdtsc, "port_in": port_in,
    "port_out": port_out, "syscall": syscall, "invalid": invalid, "write_protected": write_protected,
    "stub_call": stub_call, "msr_done": msr_done, "cr8_done": cr8_done, "apic_read": apic_read,
    "apic_write": apic_write, "check_iret": lambda v: EV.check_iret(v),
}
