"""Partition reference time and the reference TSC page (TLFS §12.4, §12.7; digest §5).

One formula everywhere: ``ReferenceTime = ((VirtualTsc * TscScale) >> 64) + TscOffset`` with
``TscScale = floor(2**64 * 10**7 / TscHz)`` (:attr:`VirtualClock.scale`). TIME_REF_COUNT and the page
are both computed from it, so a guest reading the page gets exactly what the MSR returns (KVM
get_time_ref_counter does the same while the page is valid).

Sequence rules (digest §5): a published page carries a TscSequence that is never 0 nor 0xFFFFFFFF
(0 = "invalid, fall back to the MSR" in TLFS 5.0c+, 0xFFFFFFFF = invalid in the 2013 WDK); every
change writes 0 first, then the new scale/offset, then the bumped sequence (KVM kvm_hv_setup_tsc_page).
"""

from __future__ import annotations

import contextlib
import struct
from typing import Any, Final

from viridian.abi.memory import GuestMemory, GuestMemoryError
from viridian.clock import VirtualClock
from viridian.state import Fields, StateError
from viridian.tlfs.hypercalls import HV_PAGE_SIZE
from viridian.tlfs.msrs import PAGE_ENABLE, PAGE_GPFN_SHIFT

MASK64: Final = (1 << 64) - 1
SEQUENCE_INVALID: Final = 0x00000000  # TLFS 5.0c+/md: guest falls back to TIME_REF_COUNT
SEQUENCE_LEGACY_INVALID: Final = 0xFFFFFFFF  # 2013 WDK "invalid"; never published as valid
REFERENCE_TSC_RSVDP: Final = 0xFFE  # bits 11:1
_HEADER = struct.Struct("<IIQq")  # TscSequence, Reserved1, TscScale, TscOffset (HV_REFERENCE_TSC_PAGE)


def next_sequence(seq: int) -> int:
    """The sequence after ``seq``, skipping the two invalid markers (KVM/Xen rule)."""
    seq = (seq + 1) & 0xFFFFFFFF
    while seq in (SEQUENCE_INVALID, SEQUENCE_LEGACY_INVALID):
        seq = (seq + 1) & 0xFFFFFFFF
    return seq


def page_time(tsc: int, scale: int, offset: int) -> int:
    """Reference time as a guest computes it from the page (64x64->128 multiply, high half, + offset)."""
    return (((tsc * scale) >> 64) + offset) & MASK64


def tsc_page_bytes(sequence: int, scale: int, offset: int) -> bytes:
    """A whole HV_REFERENCE_TSC_PAGE: header, then zeroed Reserved2."""
    head = _HEADER.pack(sequence & 0xFFFFFFFF, 0, scale & MASK64, _signed64(offset))
    return head + bytes(HV_PAGE_SIZE - len(head))


def _signed64(value: int) -> int:
    value &= MASK64
    return value - (1 << 64) if value >> 63 else value


class PartitionTime:
    """Partition-wide time state: reference counter, REFERENCE_TSC page, frequency-change controls."""

    def __init__(self, clock: VirtualClock, memory: GuestMemory) -> None:
        self.clock = clock
        self.memory = memory
        self.offset = 0  # TscOffset: 0 until the TSC frequency changes (reference time stays continuous)
        self.reference_tsc_msr = 0
        self.sequence = SEQUENCE_INVALID  # last sequence written to the page
        self.page_gpa: int | None = None  # where a valid page is currently published
        self.reenlightenment_control = 0  # HV_X64_MSR_REENLIGHTENMENT_CONTROL
        self.tsc_emulation_control = 0
        self.tsc_emulation_status = 0
        self.tsc_invariant_control = 0

    # -- reference time ------------------------------------------------------------------------------
    @property
    def scale(self) -> int:
        return self.clock.scale

    def now(self) -> int:
        """TIME_REF_COUNT: partition reference time in 100 ns units."""
        return page_time(self.clock.tsc(), self.scale, self.offset)

    def tsc_for_ref_time(self, ref: int) -> int:
        """Smallest virtual TSC at which :meth:`now` reaches ``ref`` (deadline scheduling)."""
        target = ref - self.offset
        return 0 if target <= 0 else self.clock.tsc_for_ref_time(target)

    # -- REFERENCE_TSC MSR and the page ----------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return bool(self.reference_tsc_msr & PAGE_ENABLE)

    def write_msr(self, value: int) -> None:
        """REFERENCE_TSC write: RsvdP 11:1 keep our (zero) bits; enabling (re)publishes the page."""
        self.reference_tsc_msr = (value & ~REFERENCE_TSC_RSVDP & MASK64) | (
            self.reference_tsc_msr & REFERENCE_TSC_RSVDP
        )
        if self.enabled:
            self.publish()
        else:
            self.page_gpa = None  # KVM: disabling leaves the old page contents alone

    def publish(self) -> bool:
        """Write the page with a fresh sequence; False if disabled or the GPFN is outside RAM (the page
        is then simply inaccessible: TLFS §12.7 says nothing of #GP, SIMP/SIEFP behave the same way)."""
        if not self.enabled:
            return False
        gpa = (self.reference_tsc_msr >> PAGE_GPFN_SHIFT) << PAGE_GPFN_SHIFT
        seq = next_sequence(self.sequence)
        try:
            self.memory.write(gpa, tsc_page_bytes(SEQUENCE_INVALID, self.scale, self.offset))
            self._write_sequence(gpa, seq)
        except GuestMemoryError:
            self.page_gpa = None
            return False
        self.sequence, self.page_gpa = seq, gpa
        return True

    def invalidate(self) -> None:
        """Publish TscSequence = 0: guests fall back to TIME_REF_COUNT until :meth:`publish`."""
        if self.page_gpa is not None:
            with contextlib.suppress(GuestMemoryError):
                self._write_sequence(self.page_gpa, SEQUENCE_INVALID)

    def republish(self) -> bool:
        """Invalidate then publish again (after restore, or when scale/offset change)."""
        self.invalidate()
        return self.publish()

    def change_tsc_frequency(self, tsc_hz: int) -> None:
        """The virtual TSC now runs at ``tsc_hz``: keep reference time continuous by moving TscOffset,
        and re-publish the page under the invalid sequence (KVM/Xen: seq 0 while the update happens)."""
        if tsc_hz <= 0:
            raise ValueError("TSC frequency must be positive")
        before = self.now()
        self.invalidate()
        self.clock.tsc_hz = tsc_hz
        self.offset = before - ((self.clock.tsc() * self.scale) >> 64)
        self.publish()

    def _write_sequence(self, gpa: int, seq: int) -> None:
        self.memory.write(gpa, (seq & 0xFFFFFFFF).to_bytes(4, "little"))

    # -- snapshots (viridian.state) ----------------------------------------------------------------------
    def save_state(self) -> dict[str, Any]:
        return {"offset": self.offset, "reference_tsc_msr": self.reference_tsc_msr, "sequence": self.sequence,
                "page_gpa": self.page_gpa, "reenlightenment_control": self.reenlightenment_control,
                "tsc_emulation_control": self.tsc_emulation_control,
                "tsc_emulation_status": self.tsc_emulation_status, "tsc_invariant_control": self.tsc_invariant_control}

    def load_state(self, f: Fields) -> None:
        """TLFS §12.7: a published page is page-aligned inside RAM; TscSequence is a u32; TscOffset an s64."""
        page = f.opt_uint("page_gpa", 0, self.memory.size - HV_PAGE_SIZE)
        if page is not None and page % HV_PAGE_SIZE:
            raise StateError(f"{f.where}.page_gpa: {page:#x} is not page-aligned")
        values = (f.uint("offset", -(1 << 63), (1 << 63) - 1), f.uint("reference_tsc_msr"),
                  f.uint("sequence", 0, 0xFFFFFFFF), page, f.uint("reenlightenment_control"),
                  f.uint("tsc_emulation_control"), f.uint("tsc_emulation_status"), f.uint("tsc_invariant_control"))
        (self.offset, self.reference_tsc_msr, self.sequence, self.page_gpa, self.reenlightenment_control,
         self.tsc_emulation_control, self.tsc_emulation_status, self.tsc_invariant_control) = values

    def reset(self) -> None:
        """System reset: the MSRs go back to 0; reference time keeps running (it counts since creation)."""
        self.reference_tsc_msr = 0
        self.sequence = SEQUENCE_INVALID
        self.page_gpa = None
        self.reenlightenment_control = 0
        self.tsc_emulation_control = 0
        self.tsc_emulation_status = 0
        self.tsc_invariant_control = 0
