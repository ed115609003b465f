"""A partition with SynIC/stimer enlightenments over plain RAM, plus guest-side helpers for the tests."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from msr.faults import Fault
from viridian.abi.control import HypercallControl
from viridian.abi.memory import BytesMemory
from viridian.abi.registers import HypercallRegisters
from viridian.clock import VirtualClock
from viridian.partition.partition import Partition
from viridian.partition.services import RecordingServices
from viridian.tlfs.msrs import HvMsr, sint_msr, stimer_config_msr, stimer_count_msr
from viridian.tlfs.status import HvStatus

GP = "#GP"
SYNIC_FLAGS = "hv-vpindex,hv-time,hv-synic,hv-stimer,hv-stimer-direct"
SIM_GPA = 0x10000
SIEF_GPA = 0x11000
IN_GPA = 0x20000
OS_ID = 0x8100_0000_0000_0000
VEC = 0x40  # default SINT vector in tests


@dataclass
class RecordingApic:
    """Stand-in for the local APIC: records every asserted vector; ``accept=False`` models a
    software-disabled APIC that drops interrupts."""

    vectors: list[int] = field(default_factory=list)
    accept: bool = True
    x2apic: bool = True

    def assert_interrupt(self, vector: int, level: bool = False) -> bool:
        self.vectors.append(vector)
        return self.accept


@dataclass
class Rig:
    part: Partition
    mem: BytesMemory
    services: RecordingServices
    clock: VirtualClock
    apics: list[Any]

    # -- MSRs ------------------------------------------------------------------------------------------
    def wr(self, index: int, value: int, vp: int = 0) -> str | None:
        res = self.part.vps[vp].wrmsr(index, value)
        if isinstance(res, Fault):
            assert res.vector == 13, res
            return GP
        assert res is None, res
        return None

    def rd(self, index: int, vp: int = 0) -> int | str:
        res = self.part.vps[vp].rdmsr(index)
        if isinstance(res, Fault):
            assert res.vector == 13, res
            return GP
        assert isinstance(res, int)
        return res

    def ok(self, index: int, value: int, vp: int = 0) -> None:
        assert self.wr(index, value, vp) is None, f"{index:#x} <- {value:#x} faulted"

    def enable(self, vp: int = 0, *, sim: int | None = SIM_GPA, sief: int | None = SIEF_GPA) -> None:
        """Guest SynIC bring-up: SCONTROL, SIMP, SIEFP."""
        self.ok(HvMsr.SCONTROL, 1, vp)
        if sim is not None:
            self.ok(HvMsr.SIMP, sim | 1, vp)
        if sief is not None:
            self.ok(HvMsr.SIEFP, sief | 1, vp)

    def sint(self, n: int, vector: int = VEC, *, masked: bool = False, auto_eoi: bool = False,
             polling: bool = False, vp: int = 0) -> None:
        value = vector | masked << 16 | auto_eoi << 17 | polling << 18
        self.ok(sint_msr(n), value, vp)

    def stimer(self, n: int, config: int, count: int | None = None, vp: int = 0) -> None:
        self.ok(stimer_config_msr(n), config, vp)
        if count is not None:
            self.ok(stimer_count_msr(n), count, vp)

    # -- SIM / SIEF ---------------------------------------------------------------------------------------
    def slot(self, sint: int, sim: int = SIM_GPA) -> bytes:
        return self.mem.read(sim + sint * 256, 256)

    def slot_header(self, sint: int, sim: int = SIM_GPA) -> tuple[int, int, int, int, int]:
        """(MessageType, PayloadSize, MessageFlags, Reserved, OriginationId)."""
        return struct.unpack_from("<IBBHQ", self.slot(sint, sim))

    def consume(self, sint: int, *, eom: bool = True, vp: int = 0, sim: int = SIM_GPA) -> bytes:
        """Guest protocol: copy the slot, set MessageType = None, EOM if MessagePending was set."""
        data = self.slot(sint, sim)
        self.mem.write(sim + sint * 256, b"\0\0\0\0")
        if eom and data[5] & 1:
            self.ok(HvMsr.EOM, 0, vp)
        return data

    def flag_set(self, sint: int, flag: int, sief: int = SIEF_GPA) -> bool:
        return bool(self.mem.read(sief + sint * 256 + flag // 8, 1)[0] >> (flag % 8) & 1)

    # -- time -----------------------------------------------------------------------------------------------
    def now(self) -> int:
        return self.part.reference_time()

    def advance_to(self, ref: int) -> None:
        """Move the virtual TSC so reference time is exactly ``ref`` (100 ns units)."""
        self.clock.set_tsc(self.clock.tsc_for_ref_time(ref))
        assert self.now() == ref, (self.now(), ref)

    def advance(self, delta: int) -> None:
        self.advance_to(self.now() + delta)

    def poll(self, vp: int = 0) -> int | None:
        return self.part.poll(vp)

    # -- hypercalls ------------------------------------------------------------------------------------------
    def hypercall(self, code: int, data: bytes, *, fast: bool = False, vp: int = 0) -> HvStatus:
        if self.part.guest_os_id == 0:
            self.ok(HvMsr.GUEST_OS_ID, OS_ID, vp)
        control = HypercallControl.decode(code | (fast << 16))
        if fast:
            raw = data.ljust(16, b"\0")
            regs = HypercallRegisters(rcx=control.encode(), rdx=int.from_bytes(raw[:8], "little"),
                                      r8=int.from_bytes(raw[8:16], "little"))
        else:
            self.mem.write(IN_GPA, data)
            regs = HypercallRegisters(rcx=control.encode(), rdx=IN_GPA, r8=0)
        out = self.part.hypercall(vp, regs)
        assert out.fault is None, out.fault
        assert out.status is not None
        return out.status


def make(flags: str = SYNIC_FLAGS, *, vp_count: int = 2, mem_kib: int = 1024, real_apic: bool = False) -> Rig:
    """A partition with ``flags`` (QEMU hv-* syntax); interrupts go to :class:`RecordingApic` doubles, or
    with ``real_apic`` to software-enabled :class:`viridian.devices.lapic.LocalApic` models."""
    from viridian.config.qemu import parse_qemu

    config = parse_qemu(flags)
    memory = BytesMemory(mem_kib << 10)
    services = RecordingServices()
    clock = VirtualClock()
    apics: list[Any] = [RecordingApic() for _ in range(vp_count)]
    if real_apic:
        from msr.apic import APIC_SVR
        from viridian.devices.lapic import LocalApic

        apics = [LocalApic(i, clock) for i in range(vp_count)]
        for apic in apics:
            apic.write_register(APIC_SVR, 0x1FF)  # software-enable, spurious vector 0xFF
    part = Partition(config, memory, vp_count=vp_count, services=services, clock=clock, apics=apics)
    return Rig(part, memory, services, clock, apics)


def post_input(conn: int, msg_type: int, payload: bytes, *, size: int | None = None, reserved: int = 0) -> bytes:
    """HV_INPUT_POST_MESSAGE (256 bytes)."""
    n = len(payload) if size is None else size
    return struct.pack("<IIII", conn, reserved, msg_type, n) + payload.ljust(240, b"\0")[:240]


def signal_input(conn: int, flag: int, reserved: int = 0) -> bytes:
    """HV_INPUT_SIGNAL_EVENT (8 bytes)."""
    return struct.pack("<IHH", conn, flag, reserved)
