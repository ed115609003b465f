"""Extended hypercalls (codes >= 0x8000, TLFS §3 "Extended hypercall interface"): HvExtCallQueryCapabilities.

The model offers no extended call beyond the query itself, so the capability mask is 0 (as KVM answers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from viridian.abi.dispatch import HypercallCall
from viridian.abi.memory import GuestMemoryError
from viridian.partition.gates import privilege
from viridian.partition.hypercalls import HV_CALLS
from viridian.tlfs.cpuid import PartitionPrivilege
from viridian.tlfs.hypercalls import HV_PAGE_SIZE, HvCall
from viridian.tlfs.status import HvStatus

if TYPE_CHECKING:
    from viridian.partition.vp import VirtualProcessor

EXT_CAPABILITIES: Final = 0  # no HvExtCall* beyond QueryCapabilities (ExtCapability bits all clear)
OUTPUT_SIZE: Final = 8

extended_hypercalls = privilege(PartitionPrivilege.ENABLE_EXTENDED_HYPERCALLS)


@HV_CALLS.simple(HvCall.EXT_QUERY_CAPABILITIES, gate=extended_hypercalls,
                 cite="TLFS §3 HvExtCallQueryCapabilities; KVM kvm_hv_hypercall")
def ext_query_capabilities(vp: VirtualProcessor, call: HypercallCall) -> HvStatus:
    # KVM: extended calls are slow-only, a fast one answers INVALID_PARAMETER. The u64 output is written
    # here (not declared to the dispatcher) so that a fast call reaches this check instead of the
    # dispatcher's XMM-output #UD; the slow output block obeys the usual TLFS §3.7 GPA rules.
    if call.fast or call.output_gpa is None:
        return HvStatus.INVALID_PARAMETER
    gpa, memory = call.output_gpa, vp.partition.memory
    if gpa % 8 or gpa % HV_PAGE_SIZE + OUTPUT_SIZE > HV_PAGE_SIZE or gpa + OUTPUT_SIZE > memory.size:
        return HvStatus.INVALID_ALIGNMENT
    try:
        memory.write(gpa, EXT_CAPABILITIES.to_bytes(OUTPUT_SIZE, "little"))
    except GuestMemoryError:
        return HvStatus.INVALID_ALIGNMENT
    return HvStatus.SUCCESS
