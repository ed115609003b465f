"""Rep calls: partial completion, time-out continuation and guest re-execution (TLFS §3.7 "Rep hypercalls",
"Hypercall continuation"; §3.8 RepsCompleted)."""

from __future__ import annotations

import math

import pytest
from abi_harness import (
    MODE_IDS,
    MODES,
    OUT_GPA,
    REP_IN,
    REP_IO,
    REP_SHAPES,
    REP_VAR,
    Ctx,
    Guest,
    Shape,
    apply,
    assert_result,
    control_keys,
    control_of,
    guest,
)

from viridian.abi.control import HypercallControl
from viridian.abi.dispatch import DispatchPolicy, HypercallOutcome
from viridian.tlfs.status import HvStatus

OK = HvStatus.SUCCESS
FAIL = HvStatus.INVALID_VP_INDEX
mode = pytest.mark.parametrize("long_mode", MODES, ids=MODE_IDS)
rep_shape = pytest.mark.parametrize("shape", REP_SHAPES, ids=lambda s: s.name)


def expect_written(g: Guest, first: int, last: int) -> None:
    """Guest RAM changed only in the output slots of elements first..last-1 (none for input-only calls)."""
    g.assert_memory(OUT_GPA + g.shape.rep_output * first, g.data.output(g.shape, first, last - first))


def re_execute(g: Guest, limit: int = 5000) -> tuple[HypercallOutcome, list[HypercallOutcome]]:
    """Run the call as a guest would: while it continues, apply the rewritten registers and execute the
    hypercall instruction again (RIP was not advanced). Returns the final outcome and the continuations."""
    continuations: list[HypercallOutcome] = []
    before = bytes(g.memory.buffer)
    for _ in range(limit):
        outcome = g.run()
        if not outcome.continued:
            g.before = before
            return outcome, continuations
        continuations.append(outcome)
        g.regs = apply(g.regs, outcome.registers)
    raise AssertionError("call never completed")


# -- partial completion -------------------------------------------------------------------------------
@rep_shape
@mode
@pytest.mark.parametrize("start", [0, 1])
@pytest.mark.parametrize("k", [0, 1, 3])
def test_error_at_element_k(shape: Shape, long_mode: bool, start: int, k: int) -> None:
    """TLFS §3.7: on an element error, status + RepsCompleted = elements done (absolute: start + k)."""
    count = 5
    g = guest(shape, "slow", long_mode, count=count, start=start, var_q=1 if shape.var_header else 0,
              ctx=Ctx(fail_at=start + k, fail_status=FAIL))
    outcome = g.run()
    assert_result(outcome, long_mode, FAIL, start + k)
    assert g.ctx.seen == list(range(start, start + k))
    expect_written(g, start, start + k)


@rep_shape
@mode
@pytest.mark.parametrize(("count", "start"), [(1, 0), (10, 0), (10, 5), (10, 9), (0xFF, 0xFE)])
def test_reps_completed_is_absolute(shape: Shape, long_mode: bool, count: int, start: int) -> None:
    """TLFS §3.8: start 5, count 10 -> RepsCompleted 10 on success (not 5)."""
    g = guest(shape, "slow", long_mode, count=count, start=start)
    assert_result(g.run(), long_mode, OK, count)
    assert g.ctx.seen == list(range(start, count))
    expect_written(g, start, count)


# -- continuation -------------------------------------------------------------------------------------
BUDGETS = [  # (count, budget, start)
    (1, 1, 0), (2, 1, 0), (2, 1, 1), (5, 2, 0), (5, 2, 1), (7, 3, 0), (7, 3, 1), (8, 4, 0), (8, 4, 1),
    (9, 9, 0), (9, 10, 0), (100, 7, 1), (200, 64, 0), (255, 256, 0), (255, 100, 254),
]


@rep_shape
@mode
@pytest.mark.parametrize(("count", "budget", "start"), BUDGETS, ids=[f"n{n}-b{b}-s{s}" for n, b, s in BUDGETS])
def test_budget_continuation_and_re_execution(
    shape: Shape, long_mode: bool, count: int, budget: int, start: int
) -> None:
    g = guest(shape, "slow", long_mode, count=count, start=start, policy=DispatchPolicy(rep_budget=budget))
    original = HypercallControl.decode(g.regs.control)
    final, continuations = re_execute(g)

    executions = len(continuations) + 1
    assert executions == math.ceil((count - start) / budget)
    starts = [start] + [c.reps_completed for c in continuations]
    assert starts == sorted(set(starts)) and all(s < count for s in starts)  # strictly increasing
    for c in continuations:
        assert c.status is None and c.fault is None and not c.advance_rip
        assert set(c.registers) == control_keys(long_mode)  # RCX or EDX:EAX; not RAX alone, nothing else
        assert HypercallControl.decode(control_of(c, long_mode)) == original.with_rep_start(c.reps_completed)
    assert_result(final, long_mode, OK, count)
    assert g.ctx.seen == list(range(start, count))  # every element exactly once, in order
    assert g.ctx.batches == [min(budget, count - s) for s in starts]
    expect_written(g, start, count)


@mode
def test_each_continuation_writes_only_its_own_chunk(long_mode: bool) -> None:
    g = guest(REP_IO, "slow", long_mode, count=10, start=1, policy=DispatchPolicy(rep_budget=4))
    for first, last in [(1, 5), (5, 9)]:
        outcome = g.run()
        assert outcome.continued and outcome.reps_completed == last
        expect_written(g, first, last)
        g.regs = apply(g.regs, outcome.registers)
    outcome = g.run()
    assert_result(outcome, long_mode, OK, 10)
    expect_written(g, 9, 10)


@mode
def test_continuation_rewrites_only_the_input_value(long_mode: bool) -> None:
    g = guest(REP_IN, "slow", long_mode, count=3, policy=DispatchPolicy(rep_budget=1))
    outcome = g.run()
    new = apply(g.regs, outcome.registers)
    if long_mode:
        assert set(outcome.registers) == {"rcx"} and new.rax == g.regs.rax
    else:  # the x86 input value and result value share EDX:EAX; ECX (input GPA low half) is untouched
        assert set(outcome.registers) == {"rax", "rdx"} and new.rcx == g.regs.rcx
        assert new.rax >> 32 == 0 and new.rdx >> 32 == 0
    assert new.control >> 48 == 1 and new.control & 0xFFFF_FFFF_FFFF == g.regs.control & 0xFFFF_FFFF_FFFF


@rep_shape
@mode
@pytest.mark.parametrize(("count", "budget", "fail"), [(10, 3, 7), (10, 3, 6), (10, 3, 9), (4, 1, 3), (6, 2, 0)])
def test_error_in_a_later_chunk(shape: Shape, long_mode: bool, count: int, budget: int, fail: int) -> None:
    g = guest(shape, "slow", long_mode, count=count, policy=DispatchPolicy(rep_budget=budget),
              ctx=Ctx(fail_at=fail, fail_status=FAIL))
    final, continuations = re_execute(g)
    assert len(continuations) == fail // budget
    assert_result(final, long_mode, FAIL, fail)
    assert g.ctx.seen == list(range(fail))
    expect_written(g, 0, fail)


@pytest.mark.parametrize("shape", [REP_IO, REP_VAR], ids=lambda s: s.name)
@mode
@pytest.mark.parametrize(("count", "cut"), [(5, 1), (5, 2), (6, 4)])
def test_handler_time_out_continues(shape: Shape, long_mode: bool, count: int, cut: int) -> None:
    """A handler may stop early with SUCCESS (its own time-out): the dispatcher continues from there."""
    g = guest(shape, "slow", long_mode, count=count, ctx=Ctx(cut=cut))
    final, continuations = re_execute(g)
    assert [c.reps_completed for c in continuations] == list(range(cut, count, cut))
    assert_result(final, long_mode, OK, count)
    assert g.ctx.seen == list(range(count))
    expect_written(g, 0, count)


@mode
def test_budget_of_zero_still_makes_progress(long_mode: bool) -> None:
    """TLFS §3.7: at least one rep is attempted per execution."""
    g = guest(REP_IN, "slow", long_mode, count=3, policy=DispatchPolicy(rep_budget=0))
    final, continuations = re_execute(g)
    assert len(continuations) == 2 and final.reps_completed == 3


def test_full_page_list_with_default_budget() -> None:
    """511 eight-byte elements after an 8-byte header fill the input page exactly; the default budget
    (256) splits them in two executions."""
    g = guest(REP_IO, "slow", True, count=511, in_gpa=0x2000, out_gpa=0x5000)
    assert REP_IO.in_len(511) == 0x1000
    final, continuations = re_execute(g)
    assert [c.reps_completed for c in continuations] == [256]
    assert_result(final, True, OK, 511)
    expect_written(g, 0, 511)
