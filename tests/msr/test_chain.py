"""The MSR chain a machine builds for one vCPU: x2APIC (0x800-0x8FF) -> Hyper-V (0x40000000-0x400010FF)
-> architectural -> #GP, with real providers, a real local APIC and a real partition."""

from __future__ import annotations

from msr import Bound, Fault, MsrChain
from msr.apic import APIC_SVR
from msr.arch import ARCH_MSRS, ArchMsrState
from msr.x2apic import X2APIC_ICR_MSR, X2APIC_MSRS
from viridian.abi.memory import BytesMemory
from viridian.clock import VirtualClock
from viridian.config import parse_qemu
from viridian.devices.apic_bus import ApicBus
from viridian.partition.partition import Partition
from viridian.tlfs.msrs import HvMsr

GP = "#GP"


class Vcpu:
    """What a machine keeps per vCPU: the partition's VP, its APIC state and the chain over both."""

    def __init__(self, part: Partition, index: int) -> None:
        self.vp = part.vps[index]
        self.arch = ArchMsrState(index, self.vp.apic, part.clock)  # type: ignore[arg-type]
        self.chain = MsrChain([Bound(X2APIC_MSRS, self.vp), Bound(part.msr_table, self.vp),
                               Bound(ARCH_MSRS, self.arch)])

    def rd(self, index: int) -> int | str:
        res = self.chain.rdmsr(index)
        return GP if isinstance(res, Fault) else res

    def wr(self, index: int, value: int) -> str | None:
        res = self.chain.wrmsr(index, value)
        return GP if isinstance(res, Fault) else None


def machine(flags: str = "hv-relaxed,hv-vapic,hv-vpindex", vps: int = 2) -> list[Vcpu]:
    clock = VirtualClock()
    bus = ApicBus.create(vps, clock)
    part = Partition(parse_qemu(flags), BytesMemory(1 << 20), vp_count=vps, clock=clock, apics=list(bus))
    return [Vcpu(part, i) for i in range(vps)]


def test_each_range_reaches_its_provider() -> None:
    cpu = machine()[1]
    assert cpu.rd(0x1B) == 0xFEE00800  # architectural: APIC base, not BSP
    assert cpu.rd(HvMsr.VP_INDEX) == 1  # Hyper-V range
    assert cpu.rd(0x802) == GP  # x2APIC ID: #GP while the APIC is in xAPIC mode (SDM3 §11.12.1.2)
    assert cpu.wr(0x1B, 0xFEE00C00) is None  # -> x2APIC
    assert cpu.rd(0x802) == 1  # x2APIC ID = VP index
    assert cpu.rd(0xC0000080) == GP and cpu.wr(0xC0000080, 0) == GP  # nobody's (the engine's EFER)


def test_hyperv_range_owned_even_when_undeclared() -> None:
    cpu = machine()[0]
    assert cpu.rd(0x40000FFF) == GP and cpu.rd(0x400010FF) == GP  # claimed by the Hyper-V table
    assert cpu.rd(0x40001100) == GP  # beyond it: falls through every provider, still #GP


def test_x2apic_and_hyperv_apic_msrs_share_one_apic() -> None:
    cpus = machine()
    cpu = cpus[0]
    assert cpu.wr(0x1B, 0xFEE00D00) is None
    assert cpu.wr(0x80F, 0x1FF) is None  # SVR: software-enable
    assert cpu.rd(0x800 + (APIC_SVR >> 4)) == 0x1FF
    assert cpu.wr(HvMsr.TPR, 0x20) is None and cpu.rd(0x808) == 0x20  # Hyper-V TPR = APIC TPR (0x80)
    assert cpu.wr(0x808, 0x30) is None and cpu.rd(HvMsr.TPR) == 0x30
    assert cpu.wr(0x808, 1 << 32) == GP  # x2APIC: bits 63:32 reserved except the ICR (SDM3 §11.12.1.3)
    # ICR is one 64-bit register in both views; a self IPI (shorthand 01) lands in this APIC's IRR.
    assert cpu.wr(X2APIC_ICR_MSR, 0x40040) is None
    assert cpu.vp.apic.irr_vectors() == [0x40]  # type: ignore[union-attr]
    assert cpu.rd(HvMsr.ICR) == cpu.rd(X2APIC_ICR_MSR) == 0x40040


def test_hyperv_gating_through_the_chain() -> None:
    cpu = machine("hv-relaxed")[0]
    assert cpu.rd(HvMsr.GUEST_OS_ID) == 0  # AccessHypercallMsrs: always with any enlightenment
    assert cpu.rd(HvMsr.VP_INDEX) == GP and cpu.rd(HvMsr.TPR) == GP  # not offered: #GP, not "next link"
    bare = machine("", vps=1)[0]
    assert bare.rd(HvMsr.GUEST_OS_ID) == GP  # no Hv#1: every synthetic MSR #GPs


def test_vp_without_apic() -> None:
    clock = VirtualClock()
    part = Partition(parse_qemu("hv-relaxed,hv-vapic"), BytesMemory(1 << 20), clock=clock)
    chain = MsrChain([Bound(X2APIC_MSRS, part.vps[0]), Bound(part.msr_table, part.vps[0])])
    assert isinstance(chain.rdmsr(0x802), Fault) and isinstance(chain.rdmsr(HvMsr.TPR), Fault)


class BrokenApic:
    """An APIC model with a host bug: the x2APIC provider must answer #GP, never raise."""

    x2apic = True

    def read_register(self, offset: int) -> int:
        raise RuntimeError("bug")

    def write_register(self, offset: int, value: int) -> None:
        raise RuntimeError("bug")

    def read_icr(self) -> int:
        raise RuntimeError("bug")

    def write_icr(self, value: int) -> None:
        raise RuntimeError("bug")


class Holder:
    apic = BrokenApic()


def test_x2apic_host_bug_is_gp() -> None:
    for index in (0x802, X2APIC_ICR_MSR):
        assert isinstance(X2APIC_MSRS.rdmsr(Holder(), index), Fault)  # type: ignore[arg-type]
        assert isinstance(X2APIC_MSRS.wrmsr(Holder(), index, 0), Fault)  # type: ignore[arg-type]
    assert X2APIC_MSRS.rdmsr(Holder(), 0x900) is not None  # NOT_MINE outside 0x800-0x8FF
