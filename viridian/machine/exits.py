"""What an exit means, for every engine: an MSR access, a hypercall, CPUID, port I/O or an xAPIC access
turned into model calls, accounting (stats, the negotiation log, the tracer) and an outcome the engine
applies (a value for the guest's registers, or a Fault to raise at the trapping instruction).

An engine traps the instruction, reads the registers it needs, calls one function here and writes the result
back; it never decides what an MSR or hypercall does. The machine's own entry points (``Machine.rdmsr``,
``wrmsr``, ``hypercall``) are :func:`model_rdmsr`, :func:`model_wrmsr` and :func:`model_hypercall`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from msr.faults import Fault, gp
from msr.registry import NOT_MINE
from viridian.machine import pc_machine
from viridian.machine.cpuid_base import base_leaf
from viridian.tlfs.msrs import HvMsr

if TYPE_CHECKING:
    from viridian.abi.dispatch import HypercallOutcome
    from viridian.abi.registers import HypercallRegisters
    from viridian.machine.backend import VcpuBackend
    from viridian.machine.machine import Machine
    from viridian.partition.cpuid import CpuidRegs

_APIC_MSR_REGISTER = {0x40000070: 0xB0, 0x40000071: 0x300, 0x40000072: 0x80}  # Hyper-V EOI/ICR/TPR aliases
APIC_WAKE_REGISTERS = (0x300, 0xB0, 0x80, 0xF0, 0x320, 0x380)  # ICR, EOI, TPR, SVR, LVT timer, initial count
APIC_TIMER_REGISTERS = (0x320, 0x380, 0x3E0)  # LVT timer, initial count, divide configuration


# -- the machine's model entry points ---------------------------------------------------------------------------
def model_rdmsr(m: Machine, v: VcpuBackend, index: int) -> int | Fault:
    """RDMSR through the chain x2APIC -> Hyper-V -> architectural -> #GP (msr.registry.MsrChain)."""
    res = _rdmsr(m, v, index)
    if m.tracer is not None:
        m.tracer.msr(v, index, False, 0 if isinstance(res, Fault) else res, res)
    return res


def _rdmsr(m: Machine, v: VcpuBackend, index: int) -> int | Fault:
    if 0x4000_0000 <= index <= 0x4000_FFFF and not 0x4000_0070 <= index <= 0x4000_0072:
        # hot path: the Hyper-V range goes straight to its provider (same answer as the chain)
        res = m.partition.msr_table.rdmsr(v.vp, index)
        return gp(f"unknown MSR {index:#x}") if res is NOT_MINE else res  # type: ignore[return-value]
    if 0x800 <= index <= 0x8FF:  # an x2APIC register: settle a skipped EOI first (KVM syncs PV EOI per exit)
        v.vp.assist.retire_lazy_eoi()
    res = m.chains[v.index].rdmsr(index)
    count_apic_msr(v, index)
    return res


def model_wrmsr(m: Machine, v: VcpuBackend, index: int, value: int) -> Fault | None:
    """WRMSR through the chain. Overlay pages the write moves come back as MachineServices.overlays_changed."""
    count_apic_msr(v, index)
    if 0x800 <= index <= 0x8FF:  # x2APIC EOI/ICR/TPR...: settle a skipped EOI first (as rdmsr)
        v.vp.assist.retire_lazy_eoi()
    res = m.chains[v.index].wrmsr(index, value)
    if index == HvMsr.GUEST_OS_ID:  # hypercalls enabled or not: the native NotifyLongSpinWait path follows
        m.update_fast_paths()
    if index == 0x1B and res is None:  # IA32_APIC_BASE: the xAPIC page follows the base (SDM §10.4.5)
        v.map_apic(m.arch[v.index].apic_base_address)
    if m.tracer is not None:
        m.tracer.msr(v, index, True, value, res)
    return res


def count_apic_msr(v: VcpuBackend, index: int) -> None:
    """An APIC register reached through an MSR (x2APIC 0x800-0x8FF, Hyper-V's EOI/ICR/TPR aliases)."""
    reg = _APIC_MSR_REGISTER.get(index)
    if reg is None and 0x800 <= index <= 0x8FF:
        reg = (index - 0x800) << 4
    if reg is not None:
        v.stats.apic_access(reg, via_msr=True)


def model_hypercall(m: Machine, v: VcpuBackend, regs: HypercallRegisters) -> HypercallOutcome:
    out = m.partition.hypercall(v.index, regs)
    if m.tracer is not None:
        m.tracer.hypercall(v, regs, out)
    return out


# -- exits -------------------------------------------------------------------------------------------------------
def msr_write(v: VcpuBackend, index: int, value: int, rip: int | None = None) -> Fault | None:
    """A WRMSR exit at ``rip``: counted, answered by the model (None for an MSR the engine keeps, which it
    has already executed), recorded. A Fault is raised by the engine at the WRMSR (SDM vol. 2B "WRMSR")."""
    m = v.m
    v.count_exit("msr_write", rip)
    v.stats.msr_writes[index] += 1
    if index in v.engine_msrs:
        m.neg.record_msr(v.index, m.clock.tsc(), index, True, value, None)
        return None
    res = m.wrmsr(v, index, value)
    m.neg.record_msr(v.index, m.clock.tsc(), index, True, value, res.vector if isinstance(res, Fault) else None)
    return res


def msr_read(v: VcpuBackend, index: int, rip: int | None = None) -> int | Fault | None:
    """A RDMSR exit at ``rip``: the value for EDX:EAX, a Fault, or None for an MSR the engine keeps."""
    m = v.m
    v.count_exit("msr_read", rip)
    v.stats.msr_reads[index] += 1
    neg = m.neg
    if index in v.engine_msrs:
        neg.record_msr(v.index, m.clock.tsc(), index, False, 0, None)
        return None
    value = m.rdmsr(v, index)
    if isinstance(value, Fault):
        neg.record_msr(v.index, m.clock.tsc(), index, False, 0, value.vector)
    elif ("rdmsr", index) not in neg.first:
        neg.record_msr(v.index, m.clock.tsc(), index, False, 0, None)
    return value


def hypercall(v: VcpuBackend, regs: HypercallRegisters) -> HypercallOutcome:
    """A VMCALL/VMMCALL (or our hypercall page's hook): counted, run by the partition (TLFS §3.7-3.8),
    recorded. The engine applies ``outcome.registers`` (or raises ``outcome.fault``)."""
    m = v.m
    v.count_exit("hypercall")
    outcome = m.hypercall(v, regs)
    v.stats.hypercalls[outcome.code] += 1
    result = (f"#{'UD' if outcome.fault.vector == 6 else outcome.fault.vector}" if outcome.fault is not None
              else outcome.status.name if outcome.status is not None else "?")
    if m.neg.record_hypercall(v.index, m.clock.tsc(), outcome.code, result) and outcome.code == 0x0008:
        m.update_fast_paths()  # the native fast path starts after the first call is on record
    return outcome


def cpuid(v: VcpuBackend, leaf: int, sub: int) -> CpuidRegs:
    """One CPUID exit (SDM vol. 2A "CPUID"; TLFS §2.4 for 0x40000000+): the partition's leaf or the base
    CPU's, accounted and recorded."""
    m = v.m
    v.count_exit("cpuid")
    m.neg.record_cpuid(v.index, m.clock.tsc(), leaf)
    r = m.partition.cpuid(leaf, sub)
    if r is None:
        arch = m.arch[v.index]
        r = base_leaf(leaf, sub, v.apic.apic_id, m.vcpu_count,
                      invariant_tsc=not m.partition.invariant_tsc_suppressed(),
                      limit_maxval=arch.limit_cpuid_maxval)
        if leaf == 1:
            # CPUID.1:EDX[9]: the APIC is present while IA32_APIC_BASE[11] enables it (SDM vol. 3 §10.4.3)
            r = type(r)(r.eax, r.ebx, r.ecx, r.edx & ~(1 << 9) | (1 << 9 if v.apic.hw_enabled else 0))
    return r


def port_in(v: VcpuBackend, port: int, size: int) -> int:
    """IN (SDM vol. 2A "IN"): the port bus's answer; timed PC devices are brought up to now first."""
    m = v.m
    v.count_exit("io")
    v.stats.ports[port] += 1
    platform = m.platform
    if platform is None:
        return m.ports.read(port, size)
    platform.sync(m.ports.device(port))  # timed PC devices up to now first (pc_platform.sync)
    value = m.ports.read(port, size)
    pc_machine.after_access(v, write=False)
    return value


def port_out(v: VcpuBackend, port: int, size: int, value: int) -> None:
    """OUT (SDM vol. 2A "OUT"): to the port bus; a PC device may raise an interrupt or arm a timer."""
    m = v.m
    v.count_exit("io")
    v.stats.ports[port] += 1
    if m.platform is not None:
        m.platform.sync(m.ports.device(port))
    m.ports.write(port, size, value)
    if m.platform is not None:
        pc_machine.after_access(v)


def apic_read(v: VcpuBackend, offset: int, size: int, disabled_page: bytearray) -> int:
    """A read of the xAPIC page (SDM vol. 3 §10.4.1). ``disabled_page``: what the page holds while the APIC
    is hardware-disabled (plain memory, as on KVM)."""
    m = v.m
    v.count_exit("mmio")
    v.vp.assist.retire_lazy_eoi()  # settle NoEoiRequired at the exit (KVM: PV EOI synced per exit)
    if not v.apic.hw_enabled:  # IA32_APIC_BASE[11] = 0: no APIC answers (SDM vol. 3 §10.4.3)
        return int.from_bytes(disabled_page[offset:offset + size], "little")
    reg = offset & ~0xF
    v.stats.apic_access(reg, via_msr=False)
    m.neg.record_mmio(v.index, m.clock.tsc(), reg, False)
    if v.apic.x2apic:
        return 0xFFFF_FFFF  # xAPIC MMIO is disabled in x2APIC mode
    value = v.apic.read_register(reg) if offset & 0xF < 4 else 0
    return (value >> (8 * (offset & 3))) & ((1 << (8 * size)) - 1)


def apic_write(v: VcpuBackend, offset: int, size: int, value: int, disabled_page: bytearray) -> int | None:
    """A write of the xAPIC page; returns the register written (None: nothing reached the APIC). A write
    that may make an interrupt deliverable re-evaluates at the next block start (stopping at once would
    re-run the write); one that arms the timer ends the run at its deadline."""
    m = v.m
    v.count_exit("mmio")
    v.vp.assist.retire_lazy_eoi()  # settle NoEoiRequired at the exit (KVM: PV EOI synced per exit)
    if not v.apic.hw_enabled:  # plain memory then, as on KVM (kvm-unit-tests apic.c reads back
        disabled_page[offset:offset + size] = (value & ((1 << 8 * size) - 1)).to_bytes(size, "little")
        return None  # what it wrote: verify_disabled_apic_mmio); all-ones before any write
    reg = offset & ~0xF
    v.stats.apic_access(reg, via_msr=False)
    m.neg.record_mmio(v.index, m.clock.tsc(), reg, True)
    if v.apic.x2apic or offset & 0xF:
        return None
    v.apic.write_register(reg, value & 0xFFFF_FFFF)
    return reg


def after_apic_write(v: VcpuBackend, reg: int) -> None:
    """What an xAPIC register write asks of the run (after the engine refreshed what it caches)."""
    if reg in APIC_WAKE_REGISTERS:
        v.recheck_at_next_block()
    if reg in APIC_TIMER_REGISTERS:  # the timer may now expire within this run
        v.clip_to_deadline()
