"""Control-word validation and the legal-environment rule, through dispatch (TLFS §3.2, §3.7, §3.8)."""

from __future__ import annotations

import pytest
from abi_harness import (
    CONVS,
    GATED,
    MODE_IDS,
    MODES,
    OUT_GPA,
    REP_SHAPES,
    REP_VAR,
    SHAPES,
    SIMPLE_SHAPES,
    SLOW_ONLY,
    UNKNOWN_CODE,
    VARHDR,
    Ctx,
    Guest,
    Shape,
    assert_result,
    assert_ud,
    guest,
    set_pair,
)

from viridian.tlfs import hypercalls as hc
from viridian.tlfs.status import HvStatus

BAD_INPUT = HvStatus.INVALID_HYPERCALL_INPUT
RESERVED_BITS = (*range(27, 31), *range(44, 48), *range(60, 64))
mode = pytest.mark.parametrize("long_mode", MODES, ids=MODE_IDS)
every_shape = pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)


def valid_guest(shape: Shape, long_mode: bool, conv: str = "slow", **kw: int) -> Guest:
    """A call of ``shape`` that would succeed, before the test breaks one thing."""
    args: dict[str, int] = {"count": 2} if shape.rep else {}
    args.update(kw)
    return guest(shape, conv, long_mode, **args)


def assert_rejected(g: Guest, status: HvStatus) -> None:
    outcome = g.run()
    assert_result(outcome, g.regs.long_mode, status, 0)
    assert g.ctx.calls == [] and g.changed() == []


@every_shape
@mode
def test_baseline_is_valid(shape: Shape, long_mode: bool) -> None:
    g = valid_guest(shape, long_mode)
    assert g.run().status == HvStatus.SUCCESS and len(g.ctx.calls) == 1


@mode
@pytest.mark.parametrize("conv", CONVS)
@pytest.mark.parametrize("extra", [0, hc.CONTROL_RESERVED_MASK | hc.CONTROL_NESTED | 5 << 32 | 7 << 48],
                         ids=["clean", "garbage"])
def test_unknown_code(long_mode: bool, conv: str, extra: int) -> None:
    """TLFS §3.8: unrecognised call code -> INVALID_HYPERCALL_CODE, whatever else the input value says."""
    g = guest(SHAPES[0], conv, long_mode)
    set_pair(g.regs, "control", UNKNOWN_CODE | (hc.CONTROL_FAST if conv != "slow" else 0) | extra)
    outcome = g.run()
    assert_result(outcome, long_mode, HvStatus.INVALID_HYPERCALL_CODE)
    assert outcome.name.startswith("unknown") and g.changed() == []


@mode
@pytest.mark.parametrize("conv", CONVS)
def test_gate_closed_is_access_denied(long_mode: bool, conv: str) -> None:
    g = guest(GATED, conv, long_mode, ctx=Ctx(allow=False))
    assert_rejected(g, HvStatus.ACCESS_DENIED)


@mode
def test_gate_is_checked_before_the_control_word(long_mode: bool) -> None:
    """KVM order (and TLFS 'prefer ACCESS_DENIED'): a closed gate wins over a malformed input value."""
    g = guest(GATED, "slow", long_mode, count=3, start=1, var_q=2, extra=hc.CONTROL_RESERVED_MASK,
              ctx=Ctx(allow=False))
    assert_rejected(g, HvStatus.ACCESS_DENIED)


@every_shape
@mode
@pytest.mark.parametrize("bit", [*RESERVED_BITS, 31], ids=lambda b: f"bit{b}")
def test_reserved_and_nested_bits(shape: Shape, long_mode: bool, bit: int) -> None:
    """TLFS §3.7: RsvdZ 30:27, 47:44, 63:60 set -> INVALID_HYPERCALL_INPUT; IsNested (31) is not offered."""
    assert_rejected(valid_guest(shape, long_mode, extra=1 << bit), BAD_INPUT)


@pytest.mark.parametrize("shape", SIMPLE_SHAPES, ids=lambda s: s.name)
@mode
@pytest.mark.parametrize(("count", "start"), [(1, 0), (0xFFF, 0), (0, 1), (2, 1), (0, 0xFFF)])
def test_simple_call_with_rep_fields(shape: Shape, long_mode: bool, count: int, start: int) -> None:
    """TLFS §3.7: rep count and rep start index must be zero for a simple call."""
    assert_rejected(valid_guest(shape, long_mode, count=count, start=start), BAD_INPUT)


@pytest.mark.parametrize("shape", REP_SHAPES, ids=lambda s: s.name)
@mode
@pytest.mark.parametrize(("count", "start"), [(0, 0), (0, 1), (1, 1), (3, 3), (3, 4), (1, 0xFFF), (0xFFE, 0xFFF)])
def test_rep_call_count_and_start(shape: Shape, long_mode: bool, count: int, start: int) -> None:
    """TLFS §3.7: a rep call needs RepCount > 0 and RepStartIndex < RepCount."""
    assert_rejected(valid_guest(shape, long_mode, count=count, start=start), BAD_INPUT)


@pytest.mark.parametrize("shape", [s for s in SHAPES if not s.var_header], ids=lambda s: s.name)
@mode
@pytest.mark.parametrize("var_q", [1, 2, 0x3FF])
def test_var_header_on_call_without_one(shape: Shape, long_mode: bool, var_q: int) -> None:
    """TLFS §3.7: non-zero VariableHeaderSize on a call not documented to take one."""
    assert_rejected(valid_guest(shape, long_mode, var_q=var_q), BAD_INPUT)


@pytest.mark.parametrize("shape", [VARHDR, REP_VAR], ids=lambda s: s.name)
@mode
@pytest.mark.parametrize("var_q", [0, 1, 3])
def test_var_header_accepted_where_declared(shape: Shape, long_mode: bool, var_q: int) -> None:
    g = valid_guest(shape, long_mode, var_q=var_q)
    outcome = g.run()
    assert outcome.status == HvStatus.SUCCESS
    assert g.ctx.calls[0].var_header == g.data.var
    assert len(g.data.var) == 8 * var_q
    g.assert_memory(OUT_GPA, g.data.output(shape))


@mode
@pytest.mark.parametrize("conv", ["fast", "xmm"])
def test_fast_on_slow_only_call(long_mode: bool, conv: str) -> None:
    assert_rejected(guest(SLOW_ONLY, conv, long_mode), BAD_INPUT)


# -- legal environment --------------------------------------------------------------------------------
ENVIRONMENTS = [(1, True), (2, True), (3, True), (0, False)]
ENV_IDS = ["cpl1", "cpl2", "cpl3", "real-mode"]
# (long_mode, cpl, protected): long mode implies protected mode, so real mode is x86 only.
MODE_ENVS = [(lm, cpl, pe) for lm in MODES for cpl, pe in ENVIRONMENTS if pe or not lm]
MODE_ENV_IDS = [f"{'x64' if lm else 'x86'}-{'real-mode' if not pe else f'cpl{cpl}'}" for lm, cpl, pe in MODE_ENVS]


@every_shape
@pytest.mark.parametrize("conv", CONVS)
@pytest.mark.parametrize(("long_mode", "cpl", "protected"), MODE_ENVS, ids=MODE_ENV_IDS)
def test_illegal_environment_is_ud(shape: Shape, conv: str, long_mode: bool, cpl: int, protected: bool) -> None:
    """TLFS §3.2: CPL > 0 or real mode -> #UD; RIP stays, no register or memory is written."""
    g = valid_guest(shape, long_mode, conv)
    g.regs.cpl, g.regs.protected = cpl, protected
    outcome = g.run()
    assert_ud(outcome)
    assert g.ctx.calls == [] and g.changed() == []


@pytest.mark.parametrize(("cpl", "protected"), ENVIRONMENTS, ids=ENV_IDS)
def test_illegal_environment_wins_over_everything(cpl: int, protected: bool) -> None:
    g = guest(GATED, "xmm", False, count=1, start=5, extra=hc.CONTROL_RESERVED_MASK, ctx=Ctx(allow=False))
    g.regs.cpl, g.regs.protected = cpl, protected
    assert_ud(g.run())
    set_pair(g.regs, "control", UNKNOWN_CODE)
    assert_ud(g.run())
