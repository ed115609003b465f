"""Memory-based (slow) calls: GPA alignment, page crossing, GPA range, overlap, fill patterns (TLFS §3.7)."""

from __future__ import annotations

import logging

import pytest
from abi_harness import (
    ECHO,
    GATED,
    IN_GPA,
    MODE_IDS,
    MODES,
    NOOP,
    OUT_GPA,
    RAM_SIZE,
    REP_IN,
    REP_IO,
    REP_VAR,
    SHAPES,
    SLOW_ONLY,
    VARHDR,
    WIDE,
    Ctx,
    Guest,
    Shape,
    assert_result,
    guest,
)

from viridian.abi.dispatch import DispatchPolicy
from viridian.abi.memory import BytesMemory, GuestMemoryError
from viridian.abi.registers import M64
from viridian.tlfs.status import HvStatus

ALIGN = HvStatus.INVALID_ALIGNMENT
OK = HvStatus.SUCCESS
PAGE = 0x1000
mode = pytest.mark.parametrize("long_mode", MODES, ids=MODE_IDS)
WITH_INPUT = [s for s in SHAPES if s.input_size]
WITH_OUTPUT = [s for s in SHAPES if s.output_size or s.rep_output]
COUNT = 3  # reps used where the count does not matter


def slow(shape: Shape, long_mode: bool, **kw: int) -> Guest:
    args: dict[str, int] = {"count": COUNT} if shape.rep else {}
    args.update(kw)
    return guest(shape, "slow", long_mode, **args)


def in_len(shape: Shape) -> int:
    return shape.in_len(COUNT if shape.rep else 0)


def out_len(shape: Shape) -> int:
    return shape.out_len(COUNT if shape.rep else 0)


def assert_refused(g: Guest, status: HvStatus = ALIGN) -> None:
    assert_result(g.run(), g.regs.long_mode, status)
    assert g.ctx.calls == [] and g.changed() == []


def assert_ok(g: Guest) -> None:
    outcome = g.run()
    reps = COUNT if g.shape.rep else 0
    assert_result(outcome, g.regs.long_mode, OK, reps)
    g.assert_memory(g.regs.param2, g.data.output(g.shape))


# -- alignment ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", WITH_INPUT, ids=lambda s: s.name)
@mode
@pytest.mark.parametrize("skew", [1, 2, 4, 7])
def test_input_gpa_not_8_aligned(shape: Shape, long_mode: bool, skew: int) -> None:
    assert_refused(slow(shape, long_mode, in_gpa=IN_GPA + skew))


@pytest.mark.parametrize("shape", WITH_OUTPUT, ids=lambda s: s.name)
@mode
@pytest.mark.parametrize("skew", [1, 3, 4, 6])
def test_output_gpa_not_8_aligned(shape: Shape, long_mode: bool, skew: int) -> None:
    assert_refused(slow(shape, long_mode, out_gpa=OUT_GPA + skew))


# -- page crossing ------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", WITH_INPUT, ids=lambda s: s.name)
@mode
def test_input_block_ending_at_page_end(shape: Shape, long_mode: bool) -> None:
    assert_ok(slow(shape, long_mode, in_gpa=IN_GPA + PAGE - in_len(shape)))


@pytest.mark.parametrize("shape", [s for s in WITH_INPUT if in_len(s) > 8], ids=lambda s: s.name)
@mode
@pytest.mark.parametrize("spill", ["last-qword", "all-but-first-qword"])
def test_input_block_crossing_page(shape: Shape, long_mode: bool, spill: str) -> None:
    """(An 8-aligned 8-byte block cannot cross a page, so only longer blocks are tried.)"""
    before_end = 8 if spill == "all-but-first-qword" else in_len(shape) - 8
    assert_refused(slow(shape, long_mode, in_gpa=IN_GPA + PAGE - before_end))


@pytest.mark.parametrize("shape", WITH_OUTPUT, ids=lambda s: s.name)
@mode
def test_output_block_ending_at_page_end(shape: Shape, long_mode: bool) -> None:
    assert_ok(slow(shape, long_mode, out_gpa=OUT_GPA + PAGE - out_len(shape)))


@pytest.mark.parametrize("shape", [s for s in WITH_OUTPUT if out_len(s) > 8], ids=lambda s: s.name)
@mode
@pytest.mark.parametrize("spill", ["last-qword", "all-but-first-qword"])
def test_output_block_crossing_page(shape: Shape, long_mode: bool, spill: str) -> None:
    before_end = 8 if spill == "all-but-first-qword" else out_len(shape) - 8
    assert_refused(slow(shape, long_mode, out_gpa=OUT_GPA + PAGE - before_end))


BIG_BUDGET = DispatchPolicy(rep_budget=4096)


@pytest.mark.parametrize("shape", [REP_IO, REP_VAR], ids=lambda s: s.name)
@pytest.mark.parametrize(("count", "start"), [(2, 0), (2, 1), (100, 0), (100, 99), (255, 3)])
@pytest.mark.parametrize("which", ["input", "output"])
@mode
def test_rep_list_crossing_only_at_last_element(
    shape: Shape, count: int, start: int, which: str, long_mode: bool
) -> None:
    """The list is one block: all RepCount elements (not only those from RepStartIndex) must fit the
    page; moving the list 8 bytes on puts (part of) only the last element on the next page."""
    if which == "input":
        fit = {"in_gpa": IN_GPA + PAGE - shape.in_len(count)}
    else:
        fit = {"out_gpa": OUT_GPA + PAGE - shape.out_len(count)}
    g = guest(shape, "slow", long_mode, count=count, start=start, policy=BIG_BUDGET, **fit)
    assert_result(g.run(), long_mode, OK, count)
    g.assert_memory(g.regs.param2 + shape.rep_output * start, g.data.output(shape, start))
    cross = {k: v + 8 for k, v in fit.items()}
    assert_refused(guest(shape, "slow", long_mode, count=count, start=start, policy=BIG_BUDGET, **cross))


def test_rep_list_longer_than_a_page() -> None:
    count = (PAGE - REP_IN.input_size) // REP_IN.rep_input + 1  # one element too many even at page start
    assert_refused(guest(REP_IN, "slow", True, count=count, in_gpa=0x1000))


# -- GPA range ----------------------------------------------------------------------------------------
FAR_GPAS = [RAM_SIZE, RAM_SIZE + PAGE, 1 << 32, 1 << 52, 1 << 63, (1 << 64) - PAGE, (1 << 64) - 0x10,
            (1 << 64) - 8]


@pytest.mark.parametrize("shape", WITH_INPUT, ids=lambda s: s.name)
@mode
@pytest.mark.parametrize("gpa", FAR_GPAS, ids=hex)
def test_input_gpa_outside_ram(shape: Shape, long_mode: bool, gpa: int) -> None:
    """TLFS §3.8: GPA outside the GPA space -> INVALID_ALIGNMENT; 2^64 - n must not wrap to low RAM."""
    assert_refused(slow(shape, long_mode, in_gpa=gpa))


@pytest.mark.parametrize("shape", WITH_OUTPUT, ids=lambda s: s.name)
@mode
@pytest.mark.parametrize("gpa", FAR_GPAS, ids=hex)
def test_output_gpa_outside_ram(shape: Shape, long_mode: bool, gpa: int) -> None:
    assert_refused(slow(shape, long_mode, out_gpa=gpa))


@mode
def test_block_ending_exactly_at_end_of_ram(long_mode: bool) -> None:
    g = slow(ECHO, long_mode, in_gpa=RAM_SIZE - 16, out_gpa=RAM_SIZE - 32)
    assert_ok(g)


def test_x86_gpa_high_halves_come_from_ebx_and_edi() -> None:
    """x86: input GPA is EBX:ECX, output GPA EDI:ESI: a high half alone puts the block outside RAM."""
    assert_refused(slow(ECHO, False, in_gpa=1 << 32 | IN_GPA))
    assert_refused(slow(ECHO, False, out_gpa=1 << 32 | OUT_GPA))


# -- overlap ------------------------------------------------------------------------------------------
MID = IN_GPA + 0x800  # mid-page, so neither block crosses a page whichever way it is moved


@pytest.mark.parametrize("shape", [s for s in WITH_OUTPUT if s.input_size], ids=lambda s: s.name)
@mode
@pytest.mark.parametrize("where", ["same-gpa", "output-on-last-input-qword", "output-ends-on-first-input-qword"])
def test_overlapping_input_and_output(shape: Shape, long_mode: bool, where: str) -> None:
    """TLFS §3.7: the lists cannot overlap (no status named): the model answers INVALID_PARAMETER."""
    delta = {"same-gpa": 0, "output-on-last-input-qword": in_len(shape) - 8,
             "output-ends-on-first-input-qword": 8 - out_len(shape)}[where]
    g = slow(shape, long_mode, in_gpa=MID, out_gpa=MID + delta)
    assert_refused(g, HvStatus.INVALID_PARAMETER)


@pytest.mark.parametrize("shape", [s for s in WITH_OUTPUT if s.input_size], ids=lambda s: s.name)
@mode
@pytest.mark.parametrize("where", ["output-right-after-input", "input-right-after-output"])
def test_adjacent_input_and_output_do_not_overlap(shape: Shape, long_mode: bool, where: str) -> None:
    if where == "output-right-after-input":
        g = slow(shape, long_mode, in_gpa=MID, out_gpa=MID + in_len(shape))
    else:
        g = slow(shape, long_mode, out_gpa=MID, in_gpa=MID + out_len(shape))
    assert_ok(g)


# -- zero-sized blocks --------------------------------------------------------------------------------
BOGUS_GPAS = [IN_GPA + 3, RAM_SIZE, M64, (1 << 64) - 4]


@mode
@pytest.mark.parametrize("gpa", BOGUS_GPAS, ids=hex)
def test_call_without_input_or_output_ignores_both_gpas(long_mode: bool, gpa: int) -> None:
    """TLFS §3.7: with no input (output) parameters the hypervisor ignores the corresponding GPA."""
    g = slow(NOOP, long_mode, in_gpa=gpa, out_gpa=gpa)
    assert_result(g.run(), long_mode, OK)
    assert g.changed() == [] and len(g.ctx.calls) == 1


@pytest.mark.parametrize("shape", [GATED, REP_IN], ids=lambda s: s.name)
@mode
@pytest.mark.parametrize("gpa", [*BOGUS_GPAS, IN_GPA], ids=hex)
def test_call_without_output_ignores_output_gpa(shape: Shape, long_mode: bool, gpa: int) -> None:
    """Even an output GPA equal to the input GPA: a zero-sized block overlaps nothing."""
    g = slow(shape, long_mode, out_gpa=gpa)
    assert_result(g.run(), long_mode, OK, COUNT if shape.rep else 0)
    assert g.changed() == []


# -- fill patterns ------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [ECHO, WIDE, VARHDR, SLOW_ONLY], ids=lambda s: s.name)
@mode
def test_simple_success_writes_exactly_the_output_block(shape: Shape, long_mode: bool) -> None:
    g = slow(shape, long_mode, var_q=2 if shape.var_header else 0)
    outcome = g.run()
    assert_result(outcome, long_mode, OK)
    g.assert_memory(OUT_GPA, g.data.output(shape))
    assert g.changed() and all(OUT_GPA <= i < OUT_GPA + shape.output_size for i in g.changed())
    assert g.ctx.calls[0].header == g.data.header and g.ctx.calls[0].output_gpa == OUT_GPA


@pytest.mark.parametrize("shape", [ECHO, WIDE, VARHDR, SLOW_ONLY], ids=lambda s: s.name)
@mode
def test_simple_failure_writes_no_output(shape: Shape, long_mode: bool) -> None:
    """The handler offers output with its error: none of it may reach guest memory."""
    g = slow(shape, long_mode, ctx=Ctx(status=HvStatus.INVALID_VP_INDEX))
    assert_result(g.run(), long_mode, HvStatus.INVALID_VP_INDEX)
    assert g.changed() == []


# -- memory the machine refuses -----------------------------------------------------------------------
class HoleyMemory(BytesMemory):
    """RAM with one page the model may not read or write (e.g. MMIO): accesses raise GuestMemoryError."""

    def __init__(self, base: BytesMemory, hole: int, mode: str) -> None:
        super().__init__(base.buffer)
        self.hole, self.mode = hole, mode

    def _check(self, gpa: int, length: int, kind: str) -> None:
        if kind in self.mode and gpa < self.hole + PAGE and self.hole < gpa + length:
            raise GuestMemoryError(f"{kind} of hole page {self.hole:#x}")

    def read(self, gpa: int, length: int) -> bytes:
        self._check(gpa, length, "r")
        return super().read(gpa, length)

    def write(self, gpa: int, data: bytes) -> None:
        self._check(gpa, len(data), "w")
        super().write(gpa, data)


@pytest.mark.parametrize("shape", [ECHO, REP_IO, REP_VAR], ids=lambda s: s.name)
@pytest.mark.parametrize(("hole", "kind"), [(IN_GPA, "r"), (OUT_GPA, "w")], ids=["unreadable-input", "unwritable-output"])
@mode
def test_inaccessible_page_is_a_status_not_a_host_bug(
    shape: Shape, hole: int, kind: str, long_mode: bool, caplog: pytest.LogCaptureFixture
) -> None:
    g = slow(shape, long_mode)
    g.memory = HoleyMemory(g.memory, hole, kind)
    with caplog.at_level(logging.ERROR):
        outcome = g.run()
    assert_result(outcome, long_mode, ALIGN)
    assert g.changed() == [] and caplog.records == []
