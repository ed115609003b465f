"""Register-based calls: fast (RDX/R8, EBX:ECX/EDI:ESI), XMM fast input and output (TLFS §3.7)."""

from __future__ import annotations

import pytest
from abi_harness import (
    ECHO,
    GATED,
    MODE_IDS,
    MODES,
    NOOP,
    REP_IN,
    REP_IO,
    REP_VAR,
    VARHDR,
    WIDE,
    Ctx,
    Guest,
    Shape,
    assert_fast_output,
    assert_result,
    assert_ud,
    guest,
    u64,
)

from viridian.abi.dispatch import DispatchPolicy, HypercallOutcome
from viridian.abi.memory import GuestMemoryError
from viridian.tlfs.status import HvStatus

OK = HvStatus.SUCCESS
BAD_INPUT = HvStatus.INVALID_HYPERCALL_INPUT
mode = pytest.mark.parametrize("long_mode", MODES, ids=MODE_IDS)
XMM_IN = DispatchPolicy(xmm_input=True)
XMM_OUT = DispatchPolicy(xmm_output=True)
XMM_BOTH = DispatchPolicy(xmm_input=True, xmm_output=True)
NO_XMM = DispatchPolicy()


class NoMemory:
    """A fast call must not touch guest memory at all."""

    size = 1 << 20

    def read(self, gpa: int, length: int) -> bytes:
        raise GuestMemoryError("fast call read memory")

    def write(self, gpa: int, data: bytes) -> None:
        raise GuestMemoryError("fast call wrote memory")


def run(g: Guest) -> HypercallOutcome:
    from abi_harness import TABLE

    return TABLE.dispatch(g.ctx, g.regs, NoMemory(), g.policy)


def fast(shape: Shape, long_mode: bool = True, policy: DispatchPolicy = NO_XMM, **kw: int) -> Guest:
    return guest(shape, "fast", long_mode, policy=policy, **kw)


# -- plain fast: RDX/R8 and EBX:ECX/EDI:ESI ----------------------------------------------------------
@mode
def test_fast_two_parameters(long_mode: bool) -> None:
    """REP_IN with one rep is 16 bytes: header from RDX (EBX:ECX), element from R8 (EDI:ESI)."""
    g = fast(REP_IN, long_mode, count=1)
    assert_result(run(g), long_mode, OK, 1)
    call = g.ctx.calls[0]
    assert call.header == u64(g.regs.param1) == g.data.header
    assert g.data.elements[0] == u64(g.regs.param2)
    assert g.ctx.seen == [0] and call.fast and call.output_gpa is None


@mode
def test_fast_one_parameter_ignores_the_rest(long_mode: bool) -> None:
    g = fast(GATED, long_mode)
    assert_result(run(g), long_mode, OK)
    assert g.ctx.calls[0].header == g.data.header and len(g.ctx.calls[0].header) == 8


@mode
def test_fast_without_input(long_mode: bool) -> None:
    g = fast(NOOP, long_mode)
    assert_result(run(g), long_mode, OK)
    assert g.ctx.calls[0].header == b"" and g.ctx.calls[0].var_header == b""


def test_x86_fast_parameters_are_register_pairs() -> None:
    g = fast(REP_IN, False, count=1)
    g.regs.rbx, g.regs.rcx = 0xFFFF_0000_1111_2222, 0xFFFF_0000_3333_4444
    g.regs.rdi, g.regs.rsi = 0xFFFF_0000_5555_6666, 0xFFFF_0000_7777_8888
    run(g)
    assert g.ctx.calls[0].header == u64(0x1111_2222_3333_4444)
    assert g.ctx.seen == [0x5555_6666_7777_8888 - 0x5EED_0000_0000_0000]


@pytest.mark.parametrize("long_mode", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("policy", [NO_XMM, XMM_OUT], ids=["no-xmm", "xmm-output-only"])
def test_more_than_16_bytes_needs_xmm_input(long_mode: bool, policy: DispatchPolicy) -> None:
    """TLFS §3.7: XMM fast input not offered (or not x64) -> #UD; RIP stays, no register written."""
    g = fast(REP_IN, long_mode, policy, count=2)
    assert_ud(run(g))
    assert g.ctx.calls == []


# -- XMM fast input -----------------------------------------------------------------------------------
@pytest.mark.parametrize("count", [2, 3, 6, 13])
def test_xmm_input_layout(count: int) -> None:
    """Bytes 0-7 RDX, 8-15 R8, 16-111 XMM0-5 low byte first; bytes past the block are ignored."""
    g = fast(REP_IN, True, XMM_IN, count=count)
    assert_result(run(g), True, OK, count)
    assert g.ctx.calls[0].header == g.data.header
    assert g.ctx.seen == list(range(count))


def test_xmm_input_112_bytes_fits_120_does_not() -> None:
    assert REP_IN.in_len(13) == 112 and REP_IN.in_len(14) == 120
    assert run(fast(REP_IN, True, XMM_IN, count=13)).status == OK
    g = fast(REP_IN, True, XMM_IN, count=14)
    assert_result(run(g), True, BAD_INPUT)
    assert g.ctx.calls == []


def test_xmm_input_too_big_without_xmm_is_ud() -> None:
    """Without the offer the guest has used an interface it was not given: #UD before any size rule."""
    assert_ud(run(fast(REP_IN, True, NO_XMM, count=14)))


def test_xmm_input_not_in_x86_mode() -> None:
    """x86 callers: XMM fast calls are x64-only in this model (TLFS wording is ambiguous, see report)."""
    assert_ud(run(fast(REP_IN, False, XMM_BOTH, count=2)))


@pytest.mark.parametrize("var_q", [0, 1, 5])
def test_xmm_input_with_variable_header(var_q: int) -> None:
    g = fast(REP_VAR, True, XMM_BOTH, count=2, var_q=var_q)
    outcome = run(g)
    assert outcome.status == OK and outcome.reps_completed == 2
    call = g.ctx.calls[0]
    assert call.header == g.data.header and call.var_header == g.data.var
    assert g.ctx.seen == [0, 1]
    assert_fast_output(g, outcome)


# -- XMM fast output ----------------------------------------------------------------------------------
def test_output_after_16_bytes_of_input_goes_to_xmm0() -> None:
    g = fast(ECHO, True, XMM_OUT)
    outcome = run(g)
    assert_result(outcome, True, OK, 0, frozenset({"xmm0"}))
    assert outcome.registers["xmm0"] == int.from_bytes(g.data.output(ECHO), "little")


def test_output_after_40_bytes_of_input_starts_at_xmm2() -> None:
    g = fast(WIDE, True, XMM_BOTH)
    outcome = run(g)
    assert_result(outcome, True, OK, 0, frozenset({"xmm2", "xmm3"}))
    assert_fast_output(g, outcome)


@pytest.mark.parametrize("var_q", range(12))
def test_output_position_follows_rounded_input(var_q: int) -> None:
    """VARHDR: 8 + 8*q input bytes, 8 output bytes at unit ceil(in/16) (q = 0: XMM0, R8 unused)."""
    g = fast(VARHDR, True, XMM_BOTH, var_q=var_q)
    outcome = run(g)
    unit = (8 + 8 * var_q + 15) // 16
    assert_result(outcome, True, OK, 0, frozenset({f"xmm{unit - 1}"}))
    assert_fast_output(g, outcome)


def test_output_that_does_not_fit_is_invalid_input() -> None:
    """104 or 112 bytes of input leave no output registers; REP_IO x7: 64 in + 56 out > 112."""
    for g in (fast(VARHDR, True, XMM_BOTH, var_q=12), fast(VARHDR, True, XMM_BOTH, var_q=13),
              fast(REP_IO, True, XMM_BOTH, count=7)):
        assert_result(run(g), True, BAD_INPUT)
        assert g.ctx.calls == []
    g = fast(REP_IO, True, XMM_BOTH, count=6)  # 56 in (64) + 48 out = 112: fits exactly
    outcome = run(g)
    assert outcome.status == OK
    assert_fast_output(g, outcome)


@pytest.mark.parametrize("shape", [ECHO, WIDE, VARHDR], ids=lambda s: s.name)
@pytest.mark.parametrize("policy", [NO_XMM, XMM_IN], ids=["no-xmm", "xmm-input-only"])
def test_output_without_xmm_output_is_ud(shape: Shape, policy: DispatchPolicy) -> None:
    g = fast(shape, True, policy)  # (WIDE without XMM input is #UD for its input already)
    assert_ud(run(g))
    assert g.ctx.calls == []


@pytest.mark.parametrize("shape", [ECHO, REP_IO], ids=lambda s: s.name)
def test_no_fast_output_in_x86_mode(shape: Shape) -> None:
    """TLFS §3.7: fast output is limited to x64."""
    g = fast(shape, False, XMM_BOTH, count=1 if shape.rep else 0)
    assert_ud(run(g))


@pytest.mark.parametrize("shape", [ECHO, WIDE, VARHDR], ids=lambda s: s.name)
def test_failed_call_writes_no_output_registers(shape: Shape) -> None:
    g = fast(shape, True, XMM_BOTH, ctx=Ctx(status=HvStatus.INVALID_PARAMETER))
    assert_result(run(g), True, HvStatus.INVALID_PARAMETER)


# -- fast rep output ----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [REP_IO, REP_VAR], ids=lambda s: s.name)
@pytest.mark.parametrize(("count", "start"), [(1, 0), (3, 0), (3, 1), (3, 2), (4, 3), (2, 1)])
def test_rep_output_from_start_index(shape: Shape, count: int, start: int) -> None:
    """Elements before RepStartIndex were completed earlier: their output registers (or bytes of a
    shared register) keep the value the guest holds."""
    g = fast(shape, True, XMM_BOTH, count=count, start=start)
    outcome = run(g)
    assert outcome.status == OK and outcome.reps_completed == count
    assert g.ctx.seen == list(range(start, count))
    assert_fast_output(g, outcome, start)


@pytest.mark.parametrize(("start", "fail"), [(0, 0), (0, 1), (0, 2), (1, 2), (2, 4)])
def test_rep_partial_output(start: int, fail: int) -> None:
    g = fast(REP_IO, True, XMM_BOTH, count=5, start=start, ctx=Ctx(fail_at=fail, fail_status=HvStatus.INVALID_VP_INDEX))
    outcome = run(g)
    assert outcome.status == HvStatus.INVALID_VP_INDEX and outcome.reps_completed == fail
    assert_fast_output(g, outcome, start, fail - start)


def test_fast_rep_never_continues() -> None:
    """Register output cannot be resumed: a fast rep call completes in one exit whatever the budget."""
    g = fast(REP_IN, True, DispatchPolicy(xmm_input=True, rep_budget=1), count=13)
    assert_result(run(g), True, OK, 13)
    assert g.ctx.batches == [13]
