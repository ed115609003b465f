"""The full matrix: every call shape x (slow / fast / XMM) x (x64 / x86) x (rep start 0 / 1).

For each cell the expected verdict follows from the TLFS rules alone (table below); a successful call is
then checked byte for byte: the handler got exactly its input, guest RAM (filled with 0xA5) changed only in
the output slots of the reps completed, and the registers written are exactly the ABI's.
"""

from __future__ import annotations

import pytest
from abi_harness import (
    CONVS,
    COUNT,
    FILL,
    MODES,
    OUT_GPA,
    SHAPES,
    Ctx,
    Guest,
    Shape,
    assert_fast_output,
    assert_result,
    assert_ud,
    guest,
    result_keys,
    sizes,
    verdict,
)

from viridian.tlfs.status import HvStatus

OK = HvStatus.SUCCESS
BAD_INPUT = HvStatus.INVALID_HYPERCALL_INPUT


CELLS = [
    (shape, conv, long_mode, start)
    for shape in SHAPES
    for conv in CONVS
    for long_mode in MODES
    for start in ((0, 1) if shape.rep else (0,))
]
IDS = [f"{s.name}-{c}-{'x64' if m else 'x86'}-start{st}" for s, c, m, st in CELLS]
matrix = pytest.mark.parametrize(("shape", "conv", "long_mode", "start"), CELLS, ids=IDS)


def make(shape: Shape, conv: str, long_mode: bool, start: int, ctx: Ctx | None = None) -> Guest:
    return guest(shape, conv, long_mode, start=start, ctx=ctx, **sizes(shape))


def test_verdict_table_covers_every_outcome() -> None:
    seen = {verdict(s, c, m) for s, c, m, _ in CELLS}
    assert seen == {OK, BAD_INPUT, "#UD"}


@matrix
def test_cell(shape: Shape, conv: str, long_mode: bool, start: int) -> None:
    g = make(shape, conv, long_mode, start)
    outcome = g.run()
    expected = verdict(shape, conv, long_mode)
    assert g.changed() == [] or (conv == "slow" and expected == OK)
    if expected == "#UD":
        assert_ud(outcome)
        assert g.ctx.calls == []
        return
    if expected != OK:
        assert_result(outcome, long_mode, expected)
        assert g.ctx.calls == []
        return

    reps = COUNT if shape.rep else 0
    assert outcome.status == OK and outcome.reps_completed == reps
    [call] = g.ctx.calls
    assert (call.header, call.var_header, call.long_mode, call.fast) == (
        g.data.header, g.data.var, long_mode, conv != "slow")
    assert call.output_gpa == (OUT_GPA if conv == "slow" else None)
    if shape.rep:
        assert g.ctx.seen == list(range(start, COUNT))
    if conv == "slow":
        assert_result(outcome, long_mode, OK, reps)
        size = shape.rep_output if shape.rep else shape.output_size
        g.assert_memory(OUT_GPA + start * size, g.data.output(shape, start))
    else:
        assert_fast_output(g, outcome, start) if long_mode else assert_result(outcome, long_mode, OK, reps)


@matrix
def test_cell_with_failing_handler(shape: Shape, conv: str, long_mode: bool, start: int) -> None:
    """The handler fails (simple: its status; rep: the first element it is given): no output anywhere,
    only the result value is written, RepsCompleted = RepStartIndex."""
    if verdict(shape, conv, long_mode) != OK:
        return
    ctx = Ctx(status=HvStatus.INSUFFICIENT_MEMORY, fail_at=start, fail_status=HvStatus.INSUFFICIENT_MEMORY)
    g = make(shape, conv, long_mode, start, ctx)
    outcome = g.run()
    assert_result(outcome, long_mode, HvStatus.INSUFFICIENT_MEMORY, start if shape.rep else 0)
    assert set(outcome.registers) == result_keys(long_mode)
    assert g.changed() == [] and len(g.ctx.calls) == 1


@matrix
def test_cell_memory_fill_is_intact(shape: Shape, conv: str, long_mode: bool, start: int) -> None:
    """Whatever the verdict, every byte outside the output slots still holds the fill pattern (or the
    input the guest wrote): nothing is read-modified-written or zeroed around the output."""
    g = make(shape, conv, long_mode, start)
    g.run()
    size = shape.rep_output if shape.rep else shape.output_size
    lo = OUT_GPA + start * size
    hi = OUT_GPA + shape.out_len(COUNT if shape.rep else 0)
    after = bytes(g.memory.buffer)
    assert after[:lo] == g.before[:lo] and after[hi:] == g.before[hi:]
    assert g.before[OUT_GPA:hi] == bytes([FILL]) * (hi - OUT_GPA)
