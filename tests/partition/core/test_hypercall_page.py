"""HYPERCALL MSR and the hypercall page: bytes, RsvdP, locking, GUEST_OS_ID rules, #UD before the OS ID."""

from __future__ import annotations

from typing import Any

from viridian.abi.registers import HypercallRegisters
from viridian.partition.hypercall_page import HypercallInsn, page_contents, stub
from viridian.tlfs.cpuid import Feature
from viridian.tlfs.msrs import HvMsr
from viridian.tlfs.status import HvStatus

GP = "#GP"
HC = HvMsr.HYPERCALL
PAGE = 4096


def test_page_bytes() -> None:
    assert stub() == bytes.fromhex("0f01c1c3")  # vmcall; ret
    assert stub(HypercallInsn.VMMCALL) == bytes.fromhex("0f01d9c3")  # vmmcall; ret
    page = page_contents()
    assert len(page) == PAGE and page[:4] == bytes.fromhex("0f01c1c3") and set(page[4:]) == {0xCC}
    amd = page_contents(HypercallInsn.VMMCALL)
    assert amd[:4] == bytes.fromhex("0f01d9c3") and set(amd[4:]) == {0xCC}


def test_enable_writes_page_and_lists_overlay(kit: Any) -> None:
    w = kit.world()
    part = w.partition
    kit.set_os_id(part)
    assert kit.wr(part, HC, (5 << 12) | 1) is None
    assert kit.rd(part, HC) == 0x5001
    assert w.memory.read(0x5000, PAGE) == page_contents()
    assert part.hypercall_page_gpa == 0x5000
    assert [tuple(o) for o in part.overlays()] == [(0x5000, "hypercall", False)]
    # moving it: the new page is written, the overlay follows
    assert kit.wr(part, HC, (7 << 12) | 1, vp=1) is None
    assert w.memory.read(0x7000, 4) == bytes.fromhex("0f01c1c3")
    assert [o.gpa for o in part.overlays()] == [0x7000]


def test_amd_partition_uses_vmmcall(kit: Any) -> None:
    from viridian.abi.memory import BytesMemory
    from viridian.config.qemu import parse_qemu
    from viridian.partition.partition import Partition

    mem = BytesMemory(1 << 20)
    part = Partition(parse_qemu("hv-relaxed"), mem, hypercall_insn=HypercallInsn.VMMCALL)
    kit.set_os_id(part)
    assert kit.wr(part, HC, (2 << 12) | 1) is None
    assert mem.read(0x2000, 4) == bytes.fromhex("0f01d9c3")


def test_rsvdp_and_unoffered_lock_bit_read_as_zero(kit: Any) -> None:
    part = kit.world().partition
    kit.set_os_id(part)
    # 11:2 RsvdP keep the hypervisor's 0; bit 1 is RsvdP too while HypercallMsrLock is not offered.
    assert kit.wr(part, HC, (5 << 12) | 0xFFE | 1) is None
    assert kit.rd(part, HC) == 0x5001
    assert kit.wr(part, HC, (6 << 12) | 1) is None  # not locked: still writable
    assert kit.rd(part, HC) == 0x6001


def test_disable_keeps_ram_drops_overlay(kit: Any) -> None:
    w = kit.world()
    part = w.partition
    kit.set_os_id(part)
    kit.wr(part, HC, (5 << 12) | 1)
    assert kit.wr(part, HC, 5 << 12) is None
    assert kit.rd(part, HC) == 0x5000
    assert part.overlays() == [] and part.hypercall_page_gpa is None
    assert w.memory.read(0x5000, 4) == bytes.fromhex("0f01c1c3")  # KVM: RAM keeps the stub


def test_gpfn_beyond_ram_gp(kit: Any) -> None:
    w = kit.world(mem_mib=4)
    part = w.partition
    kit.set_os_id(part)
    last = (4 << 20) // PAGE - 1
    assert kit.wr(part, HC, (last + 1) << 12 | 1) == GP
    assert kit.wr(part, HC, ((1 << 52) - 1) << 12 | 1) == GP
    assert kit.rd(part, HC) == 0 and part.overlays() == []
    assert kit.wr(part, HC, last << 12 | 1) is None  # the last page is fine
    assert w.memory.read(last * PAGE, PAGE) == page_contents()
    # disabled with an out-of-range GPFN: nothing is mapped, so nothing to refuse
    assert kit.wr(part, HC, (last + 1) << 12) is None


def test_guest_os_id_zero_keeps_page_disabled(kit: Any) -> None:
    w = kit.world()
    part = w.partition
    assert kit.wr(part, HC, (5 << 12) | 1) is None  # KVM: ignored while GUEST_OS_ID == 0
    assert kit.rd(part, HC) == 0
    assert w.memory.read(0x5000, 4) == bytes(4) and part.overlays() == []
    kit.set_os_id(part)
    kit.wr(part, HC, (5 << 12) | 1)
    kit.set_os_id(part, 0)  # TLFS §3.6: clears Enable, keeps the GPFN
    assert kit.rd(part, HC) == 0x5000 and part.overlays() == []


def test_locking(kit: Any) -> None:
    w = kit.world()
    part = w.partition
    kit.grant(part, features=Feature.HYPERCALL_MSR_LOCK)
    kit.set_os_id(part)
    assert kit.wr(part, HC, (5 << 12) | 3) is None
    assert kit.rd(part, HC) == 0x5003
    # OpenVMM: any later write #GPs (even the same value); the page does not move.
    assert kit.wr(part, HC, (6 << 12) | 1) == GP
    assert kit.wr(part, HC, 0x5003) == GP
    assert kit.wr(part, HC, 0) == GP
    assert kit.rd(part, HC) == 0x5003 and w.memory.read(0x6000, 4) == bytes(4)
    # GUEST_OS_ID = 0 still disables the page; the lock stays.
    kit.set_os_id(part, 0)
    assert kit.rd(part, HC) == 0x5002
    kit.set_os_id(part)
    assert kit.wr(part, HC, 0x5001) == GP
    # only a system reset unlocks
    part.reset()
    assert kit.rd(part, HC) == 0
    kit.set_os_id(part)
    assert kit.wr(part, HC, (6 << 12) | 1) is None


def _call(part: Any, code: int, vp: int = 0) -> Any:
    return part.hypercall(vp, HypercallRegisters(rcx=code))


def test_hypercall_ud_until_guest_os_id(kit: Any) -> None:
    part = kit.world().partition
    out = _call(part, 0x7777)
    assert out.fault is not None and out.fault.vector == 6 and not out.advance_rip and out.registers == {}
    kit.set_os_id(part)
    # KVM: GUEST_OS_ID != 0 suffices, the page need not be enabled.
    out = _call(part, 0x7777)
    assert out.fault is None and out.status == HvStatus.INVALID_HYPERCALL_CODE
    kit.set_os_id(part, 0)
    assert _call(part, 0x7777, vp=1).fault is not None


def test_hypercall_ud_without_hyperv(kit: Any) -> None:
    part = kit.world("").partition
    assert not part.offer.hv_present
    assert kit.wr(part, HvMsr.GUEST_OS_ID, 1) == GP
    out = _call(part, 0x0008)
    assert out.fault is not None and out.fault.vector == 6
