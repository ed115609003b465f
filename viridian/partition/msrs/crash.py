"""Guest crash MSRs CRASH_P0..P4 and CRASH_CTL (TLFS App. C "Guest crash registers"; KVM hyperv.c)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from viridian.abi.memory import GuestMemory, GuestMemoryError
from viridian.partition.gates import feature
from viridian.partition.msrs import HV_MSRS
from viridian.tlfs.cpuid import Feature
from viridian.tlfs.msrs import CRASH_CTL_MESSAGE, CRASH_CTL_NOTIFY, CRASH_MESSAGE_MAX, HvMsr

if TYPE_CHECKING:
    from viridian.partition.vp import VirtualProcessor

CRASH_REGS = feature(Feature.GUEST_CRASH_REGS)
CRASH_PARAMS: Final = 5
# What CRASH_CTL reads back: the capabilities we implement. KVM returns the host-set value (QEMU sets only
# CrashNotify); we also announce CrashMessage because we do read the message (Linux then sends its kmsg).
CRASH_CTL_SUPPORTED: Final = CRASH_CTL_NOTIFY | CRASH_CTL_MESSAGE


def read_crash_message(memory: GuestMemory, gpa: int, length: int) -> bytes | None:
    """The message at P3 (GPA) / P4 (length): length clamped to 4096 (TLFS maximum); None when any byte
    of the range lies outside RAM (incl. 64-bit wraparound). Never raises."""
    length = max(0, min(length, CRASH_MESSAGE_MAX))
    if gpa < 0 or gpa + length > memory.size:
        return None
    try:
        return memory.read(gpa, length)
    except GuestMemoryError:
        return None


def _make_param(n: int) -> None:
    index = HvMsr.CRASH_P0 + n

    @HV_MSRS.reader(index, name=f"CRASH_P{n}", gate=CRASH_REGS, cite="TLFS App. C; KVM D10")
    def read_param(vp: VirtualProcessor) -> int:
        # TLFS: free-form 64-bit crash parameter, partition-wide (KVM kvm_hv_msr_partition_wide).
        return vp.partition.crash_params[n]

    @HV_MSRS.writer(index, gate=CRASH_REGS, cite="TLFS App. C; KVM D10")
    def write_param(vp: VirtualProcessor, value: int) -> None:
        # TLFS: any value; the guest fills P0..P4 before writing CRASH_CTL.
        vp.partition.crash_params[n] = value


for _n in range(CRASH_PARAMS):
    _make_param(_n)


@HV_MSRS.reader(HvMsr.CRASH_CTL, name="CRASH_CTL", gate=CRASH_REGS, cite="TLFS App. C; KVM")
def read_crash_ctl(vp: VirtualProcessor) -> int:
    # TLFS: "read returns the supported bits"; KVM returns the host value (bit 63) — see CRASH_CTL_SUPPORTED.
    return CRASH_CTL_SUPPORTED


@HV_MSRS.writer(HvMsr.CRASH_CTL, gate=CRASH_REGS, cite="TLFS App. C; KVM kvm_hv_msr_set_crash_ctl")
def write_crash_ctl(vp: VirtualProcessor, value: int) -> None:
    # KVM: only CrashNotify acts, other bits are ignored (no #GP); CrashMessage -> P3 GPA / P4 length.
    if not value & CRASH_CTL_NOTIFY:
        return
    part = vp.partition
    p0, p1, p2, p3, p4 = part.crash_params
    message = read_crash_message(part.memory, p3, p4) if value & CRASH_CTL_MESSAGE else None
    part.services.notify_crash(vp.index, (p0, p1, p2, p3, p4), message)
