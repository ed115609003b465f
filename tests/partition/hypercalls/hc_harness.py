"""Harness for the flush/IPI/spin/ext/VP-register hypercall tests: build a partition (no APIC models) and
issue a hypercall through it in any calling convention (slow, fast, XMM fast; x64 or x86), reading back
the result, the output and whether RAM outside the output block stayed untouched."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from viridian.abi.control import HypercallControl, decode_result
from viridian.abi.dispatch import HypercallOutcome
from viridian.abi.memory import BytesMemory
from viridian.abi.registers import M32, M64, HypercallRegisters
from viridian.config.qemu import parse_qemu
from viridian.partition.partition import Partition
from viridian.partition.services import RecordingServices
from viridian.tlfs.msrs import HvMsr
from viridian.tlfs.status import HvStatus

IN_GPA = 0x2000
OUT_GPA = 0x5000
FILL = 0xA5  # guest RAM before every call: only the output block may change
REG_PAD = 0xEE  # fast input register bytes beyond the input
CONVS = ("slow", "fast")  # "fast" = register (or XMM, when the input needs it) fast form
MODES = (True, False)
MODE_IDS = ("x64", "x86")
OS_ID = 0x8100_0000_0000_0000  # Linux-style guest OS ID
ALL_FLAGS = (
    "hv-relaxed,hv-vapic,hv-spinlocks=0x1fff,hv-vpindex,hv-runtime,hv-crash,hv-time,hv-synic,hv-stimer,"
    "hv-tlbflush,hv-tlbflush-ext,hv-ipi,hv-reset,hv-frequencies,hv-xmm-input"
)


def u64(value: int) -> bytes:
    return (value & M64).to_bytes(8, "little")


def u32(value: int) -> bytes:
    return (value & M32).to_bytes(4, "little")


@dataclass
class World:
    partition: Partition
    memory: BytesMemory
    services: RecordingServices


def make(flags: str = ALL_FLAGS, *, vp_count: int = 3, rep_budget: int = 256, mem_kib: int = 256) -> World:
    """A partition without APIC models (flush, IPI routing and registers never touch an APIC)."""
    memory, services = BytesMemory(mem_kib << 10), RecordingServices()
    part = Partition(parse_qemu(flags), memory, vp_count=vp_count, services=services, rep_budget=rep_budget)
    assert part.vps[0].wrmsr(HvMsr.GUEST_OS_ID, OS_ID) is None  # hypercalls need a guest OS ID (KVM)
    return World(part, memory, services)


@dataclass
class Result:
    """What a call did: outcome, decoded status and reps, output bytes (slow: from RAM; fast: registers)."""

    outcome: HypercallOutcome
    status: HvStatus | int | None
    reps: int
    output: bytes
    ram_clean: bool  # RAM outside the output block is exactly as the guest left it


def grant(part: Partition, *, privileges: int = 0, features: int = 0, xmm_output: bool = False) -> None:
    """Offer CPUID bits no QEMU flag sets (AccessVpRegisters, EnableExtendedHypercalls, XMM output)."""
    offer = part.offer
    part.offer = dataclasses.replace(
        offer,
        privileges=type(offer.privileges)(int(offer.privileges) | privileges),
        privilege_mask=offer.privilege_mask | privileges,
        features=type(offer.features)(int(offer.features) | features),
        feature_mask=offer.feature_mask | features,
    )
    if xmm_output:
        part.policy = dataclasses.replace(part.policy, xmm_output=True)


def revoke_recommendations(part: Partition, bits: int) -> None:
    """Withdraw 0x40000004.EAX bits from the offer (for the not-offered cases)."""
    offer = part.offer
    part.offer = dataclasses.replace(
        offer,
        recommendations=type(offer.recommendations)(int(offer.recommendations) & ~bits),
        recommendation_mask=offer.recommendation_mask & ~bits,
    )


def call(
    part: Partition,
    code: int,
    block: bytes = b"",
    *,
    vp: int = 0,
    conv: str = "slow",
    long_mode: bool = True,
    var_qwords: int = 0,
    rep_count: int = 0,
    rep_start: int = 0,
    out_size: int = 0,
    out_gpa: int = OUT_GPA,
    control_extra: int = 0,
) -> Result:
    """Issue hypercall ``code`` with input ``block`` (header + variable header + all rep elements)."""
    control = HypercallControl(code, conv == "fast", var_qwords, False, rep_count, rep_start).encode()
    control |= control_extra
    regs = HypercallRegisters(long_mode=long_mode)
    memory: Any = part.memory
    memory.buffer[:] = bytes([FILL]) * memory.size
    if conv == "slow":
        memory.write(IN_GPA, block)
        p1, p2 = IN_GPA, out_gpa
    else:
        raw = block.ljust(16 + 16 * 6, bytes([REG_PAD]))
        p1, p2 = int.from_bytes(raw[0:8], "little"), int.from_bytes(raw[8:16], "little")
        regs.xmm = [int.from_bytes(raw[16 + 16 * i : 32 + 16 * i], "little") for i in range(6)]
    if long_mode:
        regs.rcx, regs.rdx, regs.r8 = control, p1, p2
    else:
        regs.rdx, regs.rax = control >> 32, control & M32
        regs.rbx, regs.rcx = p1 >> 32, p1 & M32
        regs.rdi, regs.rsi = p2 >> 32, p2 & M32
    outcome = part.hypercall(vp, regs)
    status, reps = (None, 0)
    if "rax" in outcome.registers:
        value = outcome.registers["rax"] | (outcome.registers.get("rdx", 0) << 32 if not long_mode else 0)
        status, reps = decode_result(value)
    output = b""
    if out_size:
        if conv == "slow":
            output = memory.read(out_gpa, out_size)
        else:
            output = _fast_output(outcome, regs, len(block), out_size)
    return Result(outcome, status, reps, output, _clean(memory, block if conv == "slow" else b"", out_size))


def _fast_output(outcome: HypercallOutcome, regs: HypercallRegisters, in_len: int, size: int) -> bytes:
    units = [u64(outcome.registers.get("rdx", regs.rdx)) + u64(outcome.registers.get("r8", regs.r8))]
    units += [outcome.registers.get(f"xmm{i}", regs.xmm[i]).to_bytes(16, "little") for i in range(6)]
    data = b"".join(units)
    start = (in_len + 15) // 16 * 16
    return data[start : start + size]


def _clean(memory: Any, block: bytes, out_size: int) -> bool:
    buf = bytearray(memory.buffer)
    if bytes(buf[IN_GPA : IN_GPA + len(block)]) != block:
        return False
    fill = bytes([FILL])
    buf[IN_GPA : IN_GPA + len(block)] = fill * len(block)
    buf[OUT_GPA : OUT_GPA + out_size] = fill * out_size
    return bytes(buf) == fill * len(buf)
