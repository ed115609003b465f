"""HvCallGetVpRegisters 0x0050 / HvCallSetVpRegisters 0x0051 (TLFS §7 "Virtual processor register access").

The synthetic registers that are also synthetic MSRs map to their MSR index and the access goes through
the partition's MSR table on the target VP, so validation, gates and side effects live in the MSR handlers
only; a register whose MSR is not offered does not exist. The 128-bit CPUID-equivalent registers
(HvRegisterHypervisorVersion 0x100, 0x200-0x203) read the partition's leaves 0x40000002-0x40000006 as
EAX | EBX << 32 | ECX << 64 | EDX << 96 and are read-only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from msr.faults import Fault
from viridian.abi.dispatch import HypercallCall, RepResult
from viridian.partition.gates import privilege
from viridian.partition.hypercalls import HV_CALLS
from viridian.tlfs.cpuid import Leaf, PartitionPrivilege
from viridian.tlfs.hypercalls import HV_PARTITION_ID_SELF, HV_VP_INDEX_SELF, HvCall
from viridian.tlfs.inputs import (
    HV_INPUT_GET_VP_REGISTERS,
    HV_REGISTER_ASSOC,
    HV_REGISTER_NAME_ELEMENT,
    REGISTER_MSR,
    HvRegisterName,
)
from viridian.tlfs.msrs import HvMsr
from viridian.tlfs.status import HvStatus

if TYPE_CHECKING:
    from viridian.partition.vp import VirtualProcessor

HEADER_SIZE: Final = 16  # {PartitionId u64, VpIndex u32, TargetVtl u8, RsvdZ u8[3]}
VALUE_SIZE: Final = 16  # HV_REGISTER_VALUE
SET_ELEMENT_SIZE: Final = 32  # {Name u32, RsvdZ u8[12], Value HV_REGISTER_VALUE}

INPUT_VTL0: Final = (0x00, 0x10)  # HV_INPUT_VTL naming VTL 0 (no VSM): all clear, or UseTargetVtl + VTL 0

vp_registers_access = privilege(PartitionPrivilege.ACCESS_VP_REGISTERS)

# TLFS datatypes/hv_register_name.md: "same as CPUID 0x4000000N" (HV_HYPERVISOR_VERSION_INFO, ...).
CPUID_REGISTERS: Final = {
    HvRegisterName.HYPERVISOR_VERSION: Leaf.VERSION,
    HvRegisterName.PRIVILEGES_AND_FEATURES_INFO: Leaf.FEATURES,
    HvRegisterName.FEATURES_INFO: Leaf.RECOMMENDATIONS,
    HvRegisterName.IMPLEMENTATION_LIMITS_INFO: Leaf.LIMITS,
    HvRegisterName.HARDWARE_FEATURES_INFO: Leaf.HARDWARE_FEATURES,
}


def _cpuid_register(target: VirtualProcessor, name: int) -> bytes | None:
    """The 16-byte value of a CPUID-equivalent register, None for any other name."""
    leaf = CPUID_REGISTERS.get(name)  # type: ignore[call-overload]
    if leaf is None:
        return None
    regs = target.partition.cpuid(leaf)
    if regs is None:  # pragma: no cover - the partition answers every hypervisor leaf
        return None
    return b"".join(r.to_bytes(4, "little") for r in (regs.eax, regs.ebx, regs.ecx, regs.edx))


def _target(vp: VirtualProcessor, header: bytes) -> VirtualProcessor | HvStatus:
    """Resolve the header: own partition only, VP_INDEX_SELF or an existing index, VTL 0 only."""
    head = HV_INPUT_GET_VP_REGISTERS.parse(header)
    if head.partition_id != HV_PARTITION_ID_SELF:
        return HvStatus.INVALID_PARTITION_ID  # TLFS: a guest may only name itself ("self")
    if head.target_vtl not in INPUT_VTL0 or head.rsvdz:
        return HvStatus.INVALID_PARAMETER
    index = head.vp_index
    if index == HV_VP_INDEX_SELF:
        return vp
    vps = vp.partition.vps
    return vps[index] if index < len(vps) else HvStatus.INVALID_VP_INDEX


def _msr_of(caller: VirtualProcessor, target: VirtualProcessor, name: int) -> int | None:
    """The MSR behind register ``name`` if it exists for ``target`` (known name, MSR declared and its
    gate offered). GuestIdle only on the caller itself: reading it parks the VP that reads."""
    try:
        index: int | None = REGISTER_MSR.get(HvRegisterName(name))
    except ValueError:
        return None
    if index is None or (index == HvMsr.GUEST_IDLE and target is not caller):
        return None
    spec = target.partition.msr_table.specs.get(index)
    return index if spec is not None and (spec.gate is None or spec.gate(target)) else None


@HV_CALLS.rep(HvCall.GET_VP_REGISTERS, input_size=HEADER_SIZE, rep_input_size=4, rep_output_size=VALUE_SIZE,
              gate=vp_registers_access, cite="TLFS §7 HvCallGetVpRegisters")
def get_vp_registers(vp: VirtualProcessor, call: HypercallCall, elements: list[bytes]) -> RepResult:
    # TLFS HvCallGetVpRegisters: one u32 name in, one 16-byte value out per rep; an unknown or not
    # offered register stops the list with INVALID_PARAMETER.
    target = _target(vp, call.header)
    if isinstance(target, HvStatus):
        return RepResult(target, 0)
    outputs: list[bytes] = []
    for raw in elements:
        name = HV_REGISTER_NAME_ELEMENT.parse(raw).name
        if (cpuid_value := _cpuid_register(target, name)) is not None:
            outputs.append(cpuid_value)
            continue
        index = _msr_of(vp, target, name)
        if index is None:
            return RepResult(HvStatus.INVALID_PARAMETER, len(outputs), tuple(outputs))
        value = target.partition.msr_table.rdmsr(target, index)
        if not isinstance(value, int):  # write-only or refused by the MSR handler
            return RepResult(HvStatus.INVALID_PARAMETER, len(outputs), tuple(outputs))
        outputs.append(value.to_bytes(8, "little") + bytes(8))
    return RepResult(HvStatus.SUCCESS, len(outputs), tuple(outputs))


@HV_CALLS.rep(HvCall.SET_VP_REGISTERS, input_size=HEADER_SIZE, rep_input_size=SET_ELEMENT_SIZE,
              gate=vp_registers_access, cite="TLFS §7 HvCallSetVpRegisters; OpenVMM (ACCESS_DENIED)")
def set_vp_registers(vp: VirtualProcessor, call: HypercallCall, elements: list[bytes]) -> RepResult:
    # TLFS HvCallSetVpRegisters: reserved bits and bits beyond the register size must be 0
    # (INVALID_PARAMETER); read-only registers cannot be set: the TLFS names no status, we answer
    # ACCESS_DENIED like OpenVMM does for registers the caller may not write.
    target = _target(vp, call.header)
    if isinstance(target, HvStatus):
        return RepResult(target, 0)
    table = target.partition.msr_table
    for done, raw in enumerate(elements):
        assoc = HV_REGISTER_ASSOC.parse(raw)
        if assoc.name in CPUID_REGISTERS:
            return RepResult(HvStatus.ACCESS_DENIED, done)  # read-only, like the read-only MSRs
        index = _msr_of(vp, target, assoc.name)
        if index is None:
            return RepResult(HvStatus.INVALID_PARAMETER, done)
        if table.specs[index].writer is None:
            return RepResult(HvStatus.ACCESS_DENIED, done)
        if assoc.rsvdz or assoc.value.high:  # RsvdZ, and bits beyond the register's 64 bits
            return RepResult(HvStatus.INVALID_PARAMETER, done)
        if isinstance(table.wrmsr(target, index, assoc.value.low), Fault):
            return RepResult(HvStatus.INVALID_PARAMETER, done)
    return RepResult(HvStatus.SUCCESS, len(elements))
