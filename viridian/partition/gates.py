"""Declarative gates: which CPUID bit must be offered for an MSR or hypercall to work.

KVM ``enforce_cpuid`` semantics (hyperv.c hv_check_msr_access / hv_check_hypercall_access): every
synthetic MSR needs 0x40000001.EAX == "Hv#1" plus its own privilege/feature bit; a gate that fails
answers #GP for MSRs and HV_STATUS_ACCESS_DENIED for hypercalls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from viridian.tlfs.cpuid import Feature, PartitionPrivilege, Recommendation

if TYPE_CHECKING:
    from viridian.partition.vp import VirtualProcessor

Gate = Callable[["VirtualProcessor"], bool]


def privilege(bits: PartitionPrivilege) -> Gate:
    """All of ``bits`` of 0x40000003.EAX/EBX are offered."""
    need = int(bits)
    return lambda vp: vp.partition.offer.hv_present and (int(vp.partition.offer.privileges) & need) == need


def feature(bits: Feature) -> Gate:
    """All of ``bits`` of 0x40000003.EDX are offered."""
    need = int(bits)
    return lambda vp: vp.partition.offer.hv_present and (int(vp.partition.offer.features) & need) == need


def recommendation(bits: Recommendation) -> Gate:
    """All of ``bits`` of 0x40000004.EAX are offered."""
    need = int(bits)
    return lambda vp: vp.partition.offer.hv_present and (int(vp.partition.offer.recommendations) & need) == need


def all_of(*gates: Gate) -> Gate:
    return lambda vp: all(g(vp) for g in gates)


def any_of(*gates: Gate) -> Gate:
    return lambda vp: any(g(vp) for g in gates)


def hv_present(vp: VirtualProcessor) -> bool:
    """0x40000001.EAX == "Hv#1" (TLFS §2.4.2)."""
    return vp.partition.offer.hv_present
