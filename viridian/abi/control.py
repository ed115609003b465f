"""The hypercall input value (control word) and result value (TLFS §3.7 / §3.8)."""

from __future__ import annotations

from dataclasses import dataclass

from viridian.tlfs import hypercalls as hc
from viridian.tlfs.status import HvStatus


@dataclass(frozen=True, slots=True)
class HypercallControl:
    """Decoded hypercall input value: 15:0 code, 16 fast, 26:17 variable-header QWORDs, 31 nested,
    43:32 rep count, 59:48 rep start; 30:27, 47:44, 63:60 RsvdZ (TLFS §3.7)."""

    code: int
    fast: bool = False
    var_header_qwords: int = 0
    nested: bool = False
    rep_count: int = 0
    rep_start: int = 0
    reserved: int = 0  # the RsvdZ bits exactly as the guest set them

    @classmethod
    def decode(cls, value: int) -> HypercallControl:
        value &= (1 << 64) - 1
        return cls(
            code=value & hc.CONTROL_CODE_MASK,
            fast=bool(value & hc.CONTROL_FAST),
            var_header_qwords=(value & hc.CONTROL_VARHEAD_MASK) >> hc.CONTROL_VARHEAD_SHIFT,
            nested=bool(value & hc.CONTROL_NESTED),
            rep_count=(value & hc.CONTROL_REP_COUNT_MASK) >> hc.CONTROL_REP_COUNT_SHIFT,
            rep_start=(value & hc.CONTROL_REP_START_MASK) >> hc.CONTROL_REP_START_SHIFT,
            reserved=value & hc.CONTROL_RESERVED_MASK,
        )

    def encode(self) -> int:
        return (
            (self.code & hc.CONTROL_CODE_MASK)
            | (hc.CONTROL_FAST if self.fast else 0)
            | ((self.var_header_qwords << hc.CONTROL_VARHEAD_SHIFT) & hc.CONTROL_VARHEAD_MASK)
            | (hc.CONTROL_NESTED if self.nested else 0)
            | ((self.rep_count << hc.CONTROL_REP_COUNT_SHIFT) & hc.CONTROL_REP_COUNT_MASK)
            | ((self.rep_start << hc.CONTROL_REP_START_SHIFT) & hc.CONTROL_REP_START_MASK)
            | (self.reserved & hc.CONTROL_RESERVED_MASK)
        )

    def with_rep_start(self, start: int) -> HypercallControl:
        return HypercallControl(
            self.code, self.fast, self.var_header_qwords, self.nested, self.rep_count, start, self.reserved
        )


def result_value(status: int, reps_completed: int = 0) -> int:
    """Hypercall result value: 15:0 status, 43:32 reps completed (absolute), rest 0 (TLFS §3.8)."""
    return (status & hc.RESULT_STATUS_MASK) | (
        (reps_completed << hc.RESULT_REPS_COMPLETED_SHIFT) & hc.RESULT_REPS_COMPLETED_MASK
    )


def decode_result(value: int) -> tuple[HvStatus | int, int]:
    """(status, reps completed) of a result value; unknown status codes stay ints."""
    code = value & hc.RESULT_STATUS_MASK
    try:
        status: HvStatus | int = HvStatus(code)
    except ValueError:
        status = code
    return status, (value & hc.RESULT_REPS_COMPLETED_MASK) >> hc.RESULT_REPS_COMPLETED_SHIFT
