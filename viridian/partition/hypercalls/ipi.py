"""Synthetic cluster IPIs 0x000B/0x0015 (TLFS §10 HvCallSendSyntheticClusterIpi / ...Ex).

Each target VP gets a fixed, edge-triggered interrupt through ``services.send_ipi`` (the machine routes
it to that VP's local APIC). Vectors 0x10..0xFF only; no NMI, no other delivery modes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from viridian.abi.dispatch import HypercallCall
from viridian.partition.gates import all_of, recommendation
from viridian.partition.hypercalls import HV_CALLS
from viridian.tlfs.cpuid import Recommendation
from viridian.tlfs.hypercalls import HvCall
from viridian.tlfs.inputs import (
    HV_INPUT_SEND_SYNTHETIC_CLUSTER_IPI,
    HV_INPUT_SEND_SYNTHETIC_CLUSTER_IPI_EX_HEADER,
    VpSet,
    VpSetError,
    parse_vp_set,
    vp_set_from_mask,
)
from viridian.tlfs.status import HvStatus

if TYPE_CHECKING:
    from viridian.partition.vp import VirtualProcessor

IPI_VECTOR_MIN: Final = 0x10
IPI_VECTOR_MAX: Final = 0xFF
# HV_INPUT_VTL (layouts.INPUT_VTL) values naming VTL 0, the only VTL of this model: all clear, or
# UseTargetVtl (bit 4) with TargetVtl 0.
INPUT_VTL0: Final = (0x00, 0x10)

cluster_ipi = recommendation(Recommendation.SYNTHETIC_CLUSTER_IPI)
cluster_ipi_ex = all_of(cluster_ipi, recommendation(Recommendation.EX_PROCESSOR_MASKS))


def _check_vector_vtl(vector: int, target_vtl: int, rsvdz: int) -> HvStatus | None:
    """TLFS answers INVALID_PARAMETER for a vector outside 0x10..0xFF and for reserved bits (KVM returns
    INVALID_HYPERCALL_INPUT; we follow the TLFS, which is explicit here). TargetVtl must name VTL 0."""
    if not IPI_VECTOR_MIN <= vector <= IPI_VECTOR_MAX:
        return HvStatus.INVALID_PARAMETER
    if target_vtl not in INPUT_VTL0 or rsvdz:
        return HvStatus.INVALID_PARAMETER
    return None


def _send(vp: VirtualProcessor, vector: int, vpset: VpSet) -> None:
    """One fixed interrupt per existing target, ascending VP index (the sender included if named)."""
    for target in vpset.members(len(vp.partition.vps)):
        vp.partition.services.send_ipi(vp.index, target, vector)


@HV_CALLS.simple(HvCall.SEND_SYNTHETIC_CLUSTER_IPI, input_size=16, gate=cluster_ipi,
                 cite="TLFS §10 HvCallSendSyntheticClusterIpi; KVM kvm_hv_send_ipi")
def send_synthetic_cluster_ipi(vp: VirtualProcessor, call: HypercallCall) -> HvStatus:
    # TLFS: {Vector, TargetVtl, rsvd, ProcessorMask}; fast form RDX = Vector | TargetVtl << 32, R8 = mask
    # (the same bytes); gate per KVM (R10). Mask 0 sends nothing and succeeds (KVM).
    head = HV_INPUT_SEND_SYNTHETIC_CLUSTER_IPI.parse(call.header)
    if (bad := _check_vector_vtl(head.vector, head.target_vtl, head.rsvdz)) is not None:
        return bad
    _send(vp, head.vector, vp_set_from_mask(head.processor_mask))
    return HvStatus.SUCCESS


@HV_CALLS.simple(HvCall.SEND_SYNTHETIC_CLUSTER_IPI_EX, input_size=24, var_header=True, gate=cluster_ipi_ex,
                 cite="TLFS §10 HvCallSendSyntheticClusterIpiEx; KVM kvm_hv_send_ipi")
def send_synthetic_cluster_ipi_ex(vp: VirtualProcessor, call: HypercallCall) -> HvStatus:
    # TLFS: {Vector, TargetVtl, rsvd, HV_VP_SET @8}, BankContents as variable header; gate per KVM (R10 + R11).
    head = HV_INPUT_SEND_SYNTHETIC_CLUSTER_IPI_EX_HEADER.parse(call.header)
    try:  # KVM: bank words != popcount(ValidBanksMask) -> INVALID_HYPERCALL_INPUT, checked first
        vpset = parse_vp_set(head.vp_set_format, head.valid_banks_mask, call.var_header)
    except VpSetError as err:
        return err.status
    if (bad := _check_vector_vtl(head.vector, head.target_vtl, head.rsvdz)) is not None:
        return bad
    _send(vp, head.vector, vpset)
    return HvStatus.SUCCESS
