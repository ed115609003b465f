"""HvCallGetVpRegisters / HvCallSetVpRegisters mapped onto the synthetic MSR table."""

from __future__ import annotations

import pytest
from hc_harness import CONVS, MODE_IDS, MODES, OS_ID, World, call, grant, make, u32, u64

from viridian.tlfs.cpuid import PartitionPrivilege
from viridian.tlfs.hypercalls import HV_PARTITION_ID_SELF, HV_VP_INDEX_SELF, HvCall
from viridian.tlfs.inputs import HvRegisterName as R
from viridian.tlfs.msrs import HvMsr, sint_msr
from viridian.tlfs.status import HvStatus

OK = HvStatus.SUCCESS
VP_REGS = int(PartitionPrivilege.ACCESS_VP_REGISTERS)


def world(**kw: object) -> World:
    w = make(**kw)  # type: ignore[arg-type]
    grant(w.partition, privileges=VP_REGS, xmm_output=True)
    return w


def header(vp: int = HV_VP_INDEX_SELF, *, partition: int = HV_PARTITION_ID_SELF, vtl: int = 0,
           rsvd: bytes = bytes(3)) -> bytes:
    return u64(partition) + u32(vp) + bytes([vtl]) + rsvd


def assoc(name: int, value: int, *, high: int = 0, rsvd: bytes = bytes(12)) -> bytes:
    return u32(name) + rsvd + u64(value) + u64(high)


def values(output: bytes) -> list[tuple[int, int]]:
    return [(int.from_bytes(output[i : i + 8], "little"), int.from_bytes(output[i + 8 : i + 16], "little"))
            for i in range(0, len(output), 16)]


# -- Get ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rep_start", [0, 1])
@pytest.mark.parametrize("long_mode", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("conv", CONVS)
def test_get(conv: str, long_mode: bool, rep_start: int) -> None:
    w = world()
    names = [R.VP_INDEX, R.GUEST_OS_ID, R.SINT3]
    block = header(2) + b"".join(u32(n) for n in names)
    res = call(w.partition, HvCall.GET_VP_REGISTERS, block, conv=conv, long_mode=long_mode, rep_count=3,
               rep_start=rep_start, out_size=48)
    if conv == "fast" and not long_mode:  # XMM fast input/output exist on x64 only
        assert res.outcome.fault is not None and res.outcome.fault.vector == 6
        return
    assert res.status == OK and res.reps == 3 and res.ram_clean
    expected = [(2, 0), (OS_ID, 0), (0x10000, 0)]  # VP 2's index, the partition's OS ID, SINT reset value
    got = values(res.output)
    assert got[rep_start:] == expected[rep_start:]
    if rep_start and conv == "slow":
        assert res.output[:16] == bytes([0xA5]) * 16  # output of reps before the start is not rewritten


def test_get_stops_at_unknown_register() -> None:
    w = world()
    block = header() + u32(R.VP_INDEX) + u32(0x12345) + u32(R.GUEST_OS_ID)
    res = call(w.partition, HvCall.GET_VP_REGISTERS, block, vp=1, rep_count=3, out_size=48)
    assert res.status == HvStatus.INVALID_PARAMETER and res.reps == 1 and res.ram_clean
    assert values(res.output)[0] == (1, 0)
    assert res.output[16:] == bytes([0xA5]) * 32  # nothing written past the failing element


def test_get_register_whose_msr_is_not_offered() -> None:
    w = world(flags="hv-relaxed,hv-vpindex,hv-xmm-input")  # no hv-crash, no hv-synic
    for name in (R.GUEST_CRASH_P0, R.SINT0, R.TPR):
        res = call(w.partition, HvCall.GET_VP_REGISTERS, header() + u32(name), rep_count=1, out_size=16)
        assert res.status == HvStatus.INVALID_PARAMETER and res.reps == 0


def test_get_write_only_register() -> None:
    w = world()
    res = call(w.partition, HvCall.GET_VP_REGISTERS, header() + u32(R.EOI), rep_count=1, out_size=16)
    assert res.status == HvStatus.INVALID_PARAMETER


@pytest.mark.parametrize(("head", "status"), [
    (header(partition=0), HvStatus.INVALID_PARTITION_ID),
    (header(partition=1), HvStatus.INVALID_PARTITION_ID),
    (header(3), HvStatus.INVALID_VP_INDEX),
    (header(0xFFFF_FFFF), HvStatus.INVALID_VP_INDEX),
    (header(vtl=1), HvStatus.INVALID_PARAMETER),
    (header(vtl=0x11), HvStatus.INVALID_PARAMETER),
    (header(rsvd=b"\0\1\0"), HvStatus.INVALID_PARAMETER),
])
def test_bad_header(head: bytes, status: HvStatus) -> None:
    w = world()
    res = call(w.partition, HvCall.GET_VP_REGISTERS, head + u32(R.VP_INDEX), rep_count=1, out_size=16)
    assert res.status == status and res.reps == 0
    res = call(w.partition, HvCall.SET_VP_REGISTERS, head + assoc(R.GUEST_OS_ID, 1), rep_count=1)
    assert res.status == status and w.partition.guest_os_id == OS_ID


def test_use_target_vtl0_is_accepted() -> None:
    w = world()
    res = call(w.partition, HvCall.GET_VP_REGISTERS, header(vtl=0x10) + u32(R.VP_INDEX), rep_count=1,
               out_size=16)
    assert res.status == OK


@pytest.mark.parametrize("code", [HvCall.GET_VP_REGISTERS, HvCall.SET_VP_REGISTERS])
def test_not_offered(code: int) -> None:
    w = make()
    res = call(w.partition, code, header() + bytes(32), rep_count=1, out_size=16)
    assert res.status == HvStatus.ACCESS_DENIED and res.ram_clean


# -- Set ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rep_start", [0, 1])
@pytest.mark.parametrize("long_mode", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("conv", CONVS)
def test_set(conv: str, long_mode: bool, rep_start: int) -> None:
    w = world()
    block = header(1) + assoc(R.SINT2, 0x10041) + assoc(R.SINT5, 0x51)
    res = call(w.partition, HvCall.SET_VP_REGISTERS, block, conv=conv, long_mode=long_mode, rep_count=2,
               rep_start=rep_start)
    if conv == "fast" and not long_mode:
        assert res.outcome.fault is not None
        return
    assert res.status == OK and res.reps == 2 and res.ram_clean
    vp1 = w.partition.vps[1]
    assert vp1.rdmsr(sint_msr(2)) == (0x10041 if rep_start == 0 else 0x10000)
    assert vp1.rdmsr(sint_msr(5)) == 0x51
    assert w.partition.vps[0].rdmsr(sint_msr(5)) == 0x10000  # only the target VP changed


def test_set_partition_wide_register() -> None:
    w = world()
    res = call(w.partition, HvCall.SET_VP_REGISTERS, header() + assoc(R.GUEST_OS_ID, 0x1234), rep_count=1)
    assert res.status == OK and w.partition.guest_os_id == 0x1234


@pytest.mark.parametrize(("element", "status"), [
    (assoc(R.VP_INDEX, 5), HvStatus.ACCESS_DENIED),  # read-only (OpenVMM: AccessDenied)
    (assoc(R.TIME_REF_COUNT, 5), HvStatus.ACCESS_DENIED),
    (assoc(0x77777, 5), HvStatus.INVALID_PARAMETER),  # unknown name
    (assoc(R.SINT0, 0x10041, rsvd=b"\1" + bytes(11)), HvStatus.INVALID_PARAMETER),  # RsvdZ
    (assoc(R.SINT0, 0x10041, high=1), HvStatus.INVALID_PARAMETER),  # beyond the register's size
    (assoc(R.SINT0, 0x05), HvStatus.INVALID_PARAMETER),  # the MSR handler refuses (#GP -> status)
])
def test_set_refused(element: bytes, status: HvStatus) -> None:
    w = world()
    block = header() + assoc(R.SINT1, 0x10042) + element + assoc(R.SINT3, 0x10043)
    res = call(w.partition, HvCall.SET_VP_REGISTERS, block, rep_count=3)
    assert res.status == status and res.reps == 1
    vp0 = w.partition.vps[0]
    assert vp0.rdmsr(sint_msr(1)) == 0x10042 and vp0.rdmsr(sint_msr(3)) == 0x10000
    assert vp0.rdmsr(sint_msr(0)) == 0x10000


def test_set_vp_assist_page_through_registers() -> None:
    w = world()
    res = call(w.partition, HvCall.SET_VP_REGISTERS, header(2) + assoc(R.VP_ASSIST_PAGE, 0x9001), rep_count=1)
    assert res.status == OK and w.partition.vps[2].rdmsr(HvMsr.VP_ASSIST_PAGE) == 0x9001
    res = call(w.partition, HvCall.SET_VP_REGISTERS, header() + assoc(R.VP_ASSIST_PAGE, 1 << 40 | 1),
               rep_count=1)
    assert res.status == HvStatus.INVALID_PARAMETER  # PFN past RAM: the MSR #GPs


def test_get_rep_budget_continuation() -> None:
    w = world(rep_budget=2)
    block = header() + u32(R.VP_INDEX) * 5
    res = call(w.partition, HvCall.GET_VP_REGISTERS, block, rep_count=5, out_size=80)
    assert res.outcome.continued and res.outcome.reps_completed == 2


# -- CPUID-equivalent registers (TLFS hv_register_name.md: "same as CPUID 0x4000000N") ------------------------
def _cpuid128(eax: int, ebx: int, ecx: int, edx: int) -> tuple[int, int]:
    return eax | ebx << 32, ecx | edx << 32


@pytest.mark.parametrize("long_mode", MODES, ids=MODE_IDS)
def test_get_cpuid_equivalent_registers(long_mode: bool) -> None:
    w = world()  # hc_harness ALL_FLAGS: relaxed, vapic, 0x1fff, vpindex, runtime, crash, time, synic, ...
    names = [R.HYPERVISOR_VERSION, R.PRIVILEGES_AND_FEATURES_INFO, R.FEATURES_INFO,
             R.IMPLEMENTATION_LIMITS_INFO, R.HARDWARE_FEATURES_INFO]
    res = call(w.partition, HvCall.GET_VP_REGISTERS, header(1) + b"".join(u32(n) for n in names),
               long_mode=long_mode, rep_count=5, out_size=80)
    assert res.status == OK and res.reps == 5 and res.ram_clean
    # QEMU values for these flags, by hand: version 10.0.14393; 0x40000003 EAX 0x0AFF (runtime, time, synic,
    # stimer, vapic, hypercall, vpindex, reset, frequencies), EBX PostMessages|SignalEvents (the test's
    # grant() widens the gate, not the leaves), EDX 0x4518 = tlbflush-ext|crash|frequencies|xmm-input|
    # dynamic partitioning; 0x40000004 tlbflush|ipi|ex-masks|relaxed|apic-msrs, spinlocks 0x1fff.
    assert values(res.output) == [
        _cpuid128(0x3839, 0x000A0000, 0, 0),
        _cpuid128(0x0AFF, 0x30, 0, 0x4518),
        _cpuid128(0xC2C, 0x1FFF, 0, 0),
        _cpuid128(0xFFFFFFFF, 0x40, 0, 0),
        (0, 0),
    ]


def test_cpuid_equivalent_registers_are_read_only() -> None:
    w = world()
    block = header() + assoc(R.SINT1, 0x10042) + assoc(R.HYPERVISOR_VERSION, 0) + assoc(R.SINT3, 0x10043)
    res = call(w.partition, HvCall.SET_VP_REGISTERS, block, rep_count=3)
    assert res.status == HvStatus.ACCESS_DENIED and res.reps == 1
    assert w.partition.vps[0].rdmsr(sint_msr(3)) == 0x10000
