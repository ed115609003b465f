"""CRASH_CTL notification with a message read from guest memory (hostile P3/P4 too), and system reset."""

from __future__ import annotations

from typing import Any

import pytest

from viridian.tlfs.cpuid import Feature, PartitionPrivilege
from viridian.tlfs.msrs import HvMsr

GP = "#GP"
NOTIFY, MESSAGE = 1 << 63, 1 << 62
MIB = 1 << 20
M64 = (1 << 64) - 1


def _crash(kit: Any, part: Any, params: tuple[int, ...], ctl: int, vp: int = 0) -> None:
    for n, value in enumerate(params):
        assert kit.wr(part, HvMsr.CRASH_P0 + n, value, vp=vp) is None
    assert kit.wr(part, HvMsr.CRASH_CTL, ctl, vp=vp) is None


def test_notify_without_message(kit: Any) -> None:
    w = kit.world("hv-crash")
    _crash(kit, w.partition, (0xD1, 2, 3, 0x3000, 5), NOTIFY, vp=1)
    assert w.services.crashes == [(1, (0xD1, 2, 3, 0x3000, 5), None)]


def test_no_notify_no_crash(kit: Any) -> None:
    w = kit.world("hv-crash")
    _crash(kit, w.partition, (1, 2, 3, 0, 0), MESSAGE | (1 << 61))
    assert w.services.crashes == []


def test_message_read_from_guest_memory(kit: Any) -> None:
    w = kit.world("hv-crash")
    w.memory.write(0x3000, b"Kernel panic - not syncing")
    _crash(kit, w.partition, (0, 0, 0, 0x3000, 12), NOTIFY | MESSAGE)
    assert w.services.crashes[-1][2] == b"Kernel panic"


@pytest.mark.parametrize(
    ("gpa", "length", "expected"),
    [
        (4 * MIB, 16, None),  # starts past RAM
        (4 * MIB - 8, 16, None),  # runs past the end of RAM
        (4 * MIB - 16, 16, b"\x11" * 16),  # ends exactly at the end of RAM
        (M64 - 7, 16, None),  # 64-bit wraparound
        (M64, M64, None),  # everything hostile at once
        (0x1000, 0, b""),  # empty message
        (0x1000, 5000, b"\x22" * 4096),  # length clamped to the 4096-byte maximum
        (0x1000, M64, b"\x22" * 4096),
        (4 * MIB - 100, 5000, None),  # clamped length still runs past RAM
    ],
)
def test_hostile_message_never_raises(kit: Any, gpa: int, length: int, expected: bytes | None) -> None:
    w = kit.world("hv-crash", mem_mib=4)
    w.memory.write(4 * MIB - 16, b"\x11" * 16)
    w.memory.write(0x1000, b"\x22" * 8192)
    _crash(kit, w.partition, (1, 2, 3, gpa, length), NOTIFY | MESSAGE)
    assert w.services.crashes == [(0, (1, 2, 3, gpa, length), expected)]


def test_system_reset_restores_initial_values(kit: Any) -> None:
    w = kit.world("hv-relaxed,hv-vpindex,hv-crash,hv-time,hv-reenlightenment,hv-runtime")
    part = w.partition
    kit.grant(part, privileges=PartitionPrivilege.ACCESS_TSC_INVARIANT_CONTROLS,
              features=Feature.HYPERCALL_MSR_LOCK)
    kit.set_os_id(part)
    writes = {
        HvMsr.HYPERCALL: 0x5003,
        HvMsr.REFERENCE_TSC: 0x6001,
        HvMsr.CRASH_P0: 1, HvMsr.CRASH_P1: 2, HvMsr.CRASH_P2: 3, HvMsr.CRASH_P3: 4, HvMsr.CRASH_P4: 5,
        HvMsr.REENLIGHTENMENT_CONTROL: (1 << 16) | 0x40,
        HvMsr.TSC_EMULATION_CONTROL: 1,
        HvMsr.TSC_INVARIANT_CONTROL: 1,
    }
    for index, value in writes.items():
        assert kit.wr(part, index, value) is None, index.name
        assert kit.rd(part, index) == value, index.name
    part.vps[1].runtime_100ns = 99
    w.clock.set_tsc(4_000_000_000)
    before = part.reference_time()
    assert len(part.overlays()) == 2

    part.reset()

    assert kit.rd(part, HvMsr.GUEST_OS_ID) == 0
    for index in writes:
        assert kit.rd(part, index) == 0, index.name
    assert kit.rd(part, HvMsr.VP_RUNTIME, 1) == 0
    assert part.overlays() == []
    assert part.hypercall(0, _regs(0x7777)).fault is not None  # GUEST_OS_ID is 0 again: #UD
    assert part.reference_time() == before  # reference time counts since creation, not since reset
    assert kit.wr(part, HvMsr.TSC_INVARIANT_CONTROL, 0) is None  # reset cleared the sticky bit


def _regs(code: int) -> Any:
    from viridian.abi.registers import HypercallRegisters

    return HypercallRegisters(rcx=code)
