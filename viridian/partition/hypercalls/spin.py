"""HvCallNotifyLongSpinWait 0x0008 (TLFS §14.5.1 / digest §7): an advisory scheduling hint."""

from __future__ import annotations

from typing import TYPE_CHECKING

from viridian.abi.dispatch import HypercallCall
from viridian.partition.hypercalls import HV_CALLS
from viridian.tlfs.cpuid import SPINLOCK_NEVER_NOTIFY
from viridian.tlfs.hypercalls import HvCall
from viridian.tlfs.status import HvStatus

if TYPE_CHECKING:
    from viridian.partition.vp import VirtualProcessor


def spin_notify_offered(vp: VirtualProcessor) -> bool:
    """KVM hv_check_hypercall_access: offered only when 0x40000004.EBX (spin retries) is neither 0 nor
    0xFFFFFFFF ("never notify")."""
    offer = vp.partition.offer
    return offer.hv_present and offer.spin_retries not in (0, SPINLOCK_NEVER_NOTIFY)


@HV_CALLS.simple(HvCall.NOTIFY_LONG_SPIN_WAIT, input_size=8, gate=spin_notify_offered,
                 cite="TLFS §14.5.1 HvCallNotifyLongSpinWait; KVM kvm_vcpu_on_spin")
def notify_long_spin_wait(vp: VirtualProcessor, call: HypercallCall) -> HvStatus:
    # TLFS: RDX[31:0] SpinCount, always SUCCESS. RDX[63:32] is RsvdZ but, like KVM, not checked: the
    # call is advisory and the TLFS promises success. Effect: let the other VPs run (KVM directed yield).
    vp.partition.services.yield_vp(vp.index, "long spin wait")
    return HvStatus.SUCCESS
