"""Host bugs inside handlers never escape dispatch; GuestFault is the one sanctioned way to fault
(docs/architecture.md "Conventions")."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from abi_harness import (
    CONVS,
    GATED,
    MODE_IDS,
    MODES,
    REP_IO,
    SHAPES,
    Ctx,
    Shape,
    apply,
    assert_result,
    guest,
    result_keys,
    sizes,
    verdict,
)

from msr.faults import Fault, GuestFault, gp, ud
from viridian.abi.dispatch import DispatchPolicy, HypercallCall, HypercallTable, RepResult
from viridian.abi.memory import BytesMemory
from viridian.abi.registers import HypercallRegisters
from viridian.tlfs.status import HvStatus

BAD_INPUT = HvStatus.INVALID_HYPERCALL_INPUT
mode = pytest.mark.parametrize("long_mode", MODES, ids=MODE_IDS)
# Every (shape, convention, mode) whose call reaches its handler.
CELLS = [(s, c, m) for s in SHAPES for c in CONVS for m in MODES if verdict(s, c, m) == HvStatus.SUCCESS]
IDS = [f"{s.name}-{c}-{'x64' if m else 'x86'}" for s, c, m in CELLS]


@pytest.mark.parametrize(("shape", "conv", "long_mode"), CELLS, ids=IDS)
def test_runtime_error_in_handler_becomes_a_status(
    shape: Shape, conv: str, long_mode: bool, caplog: pytest.LogCaptureFixture
) -> None:
    g = guest(shape, conv, long_mode, ctx=Ctx(boom=True), **sizes(shape))
    with caplog.at_level(logging.ERROR, logger="viridian.abi.dispatch"):
        outcome = g.run()
    assert_result(outcome, long_mode, BAD_INPUT)  # result registers only: no fast output leaks out
    assert g.changed() == [] and len(g.ctx.calls) == 1
    [record] = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert shape.name in record.getMessage()


@mode
def test_gate_that_raises(long_mode: bool, caplog: pytest.LogCaptureFixture) -> None:
    table: HypercallTable[None] = HypercallTable("t")

    def gate(_: None) -> bool:
        raise KeyError("feature lookup failed")

    table.simple(GATED.code, gate=gate)(lambda ctx, call: HvStatus.SUCCESS)
    regs = HypercallRegisters(long_mode=long_mode, rcx=GATED.code, rax=GATED.code)
    with caplog.at_level(logging.ERROR):
        outcome = table.dispatch(None, regs, BytesMemory(0x1000), DispatchPolicy())
    assert_result(outcome, long_mode, BAD_INPUT)
    assert len(caplog.records) == 1


# Handlers that break their own contract: the dispatcher must survive each one.
def _none(ctx: Any, call: HypercallCall) -> Any:
    return None


def _int(ctx: Any, call: HypercallCall) -> Any:
    return 0


def _text_output(ctx: Any, call: HypercallCall) -> Any:
    return HvStatus.SUCCESS, "not bytes"


def _rep_none(ctx: Any, call: HypercallCall, elements: list[bytes]) -> Any:
    return None


def _rep_bad_outputs(ctx: Any, call: HypercallCall, elements: list[bytes]) -> Any:
    return RepResult(HvStatus.SUCCESS, len(elements), (None,) * len(elements))  # type: ignore[arg-type]


BROKEN = HypercallTable[None]("broken")
BROKEN.simple(0x1, output_size=8)(_none)
BROKEN.simple(0x2, output_size=8)(_int)
BROKEN.simple(0x3, output_size=8)(_text_output)
BROKEN.rep(0x4, rep_input_size=8)(_rep_none)
BROKEN.rep(0x5, rep_input_size=8, rep_output_size=8)(_rep_bad_outputs)


@pytest.mark.parametrize("code", [0x1, 0x2, 0x3, 0x4, 0x5])
@mode
def test_contract_breaking_handlers(code: int, long_mode: bool, caplog: pytest.LogCaptureFixture) -> None:
    memory = BytesMemory(bytearray(b"\xa5") * 0x3000)
    count = 2 if code >= 4 else 0
    control = code | count << 32
    regs = HypercallRegisters(long_mode=long_mode, rcx=control, rdx=0x1000 if long_mode else control >> 32,
                              r8=0x2000, rax=control & 0xFFFFFFFF, rbx=0, rsi=0x2000, rdi=0)
    if not long_mode:
        regs.rcx = 0x1000
    with caplog.at_level(logging.ERROR):
        outcome = BROKEN.dispatch(None, regs, memory, DispatchPolicy())
    assert_result(outcome, long_mode, BAD_INPUT)
    assert bytes(memory.buffer) == b"\xa5" * 0x3000
    assert len(caplog.records) == 1


def test_rep_handler_claiming_more_than_it_was_given() -> None:
    table = HypercallTable[None]("t")
    table.rep(0x1, rep_input_size=8)(lambda ctx, call, elements: RepResult(HvStatus.SUCCESS, 99))
    regs = HypercallRegisters(rcx=0x1 | 3 << 32 | 1 << 48, rdx=0x1000)
    outcome = table.dispatch(None, regs, BytesMemory(0x2000), DispatchPolicy())
    assert_result(outcome, True, HvStatus.SUCCESS, 3)  # clipped to the elements handed over


@pytest.mark.parametrize(("shape", "conv", "long_mode"), CELLS, ids=IDS)
@pytest.mark.parametrize("fault", [gp("bad"), ud("nope"), Fault(14, 2, "pf")], ids=["gp", "ud", "pf"])
def test_guest_fault_from_handler_is_injected(
    shape: Shape, conv: str, long_mode: bool, fault: Fault, caplog: pytest.LogCaptureFixture
) -> None:
    g = guest(shape, conv, long_mode, ctx=Ctx(guest_fault=fault), **sizes(shape))
    with caplog.at_level(logging.ERROR):
        outcome = g.run()
    assert outcome.fault == fault and not outcome.advance_rip and outcome.registers == {}
    assert outcome.status is None and not outcome.continued
    assert g.changed() == [] and caplog.records == []


@mode
def test_host_bug_after_a_continuation(long_mode: bool, caplog: pytest.LogCaptureFixture) -> None:
    """Chunk one completes and continues; the handler then breaks: a status, never an exception."""
    g = guest(REP_IO, "slow", long_mode, count=4, policy=DispatchPolicy(rep_budget=2))
    first = g.run()
    assert first.continued and first.reps_completed == 2
    g.regs = apply(g.regs, first.registers)
    g.ctx.boom = True
    with caplog.at_level(logging.ERROR):
        outcome = g.run()
    assert outcome.status == BAD_INPUT and set(outcome.registers) == result_keys(long_mode)
    assert g.changed() == []


def test_registering_a_code_twice_is_refused() -> None:
    table = HypercallTable[None]("t")
    table.simple(0x10)(lambda ctx, call: HvStatus.SUCCESS)
    with pytest.raises(ValueError, match="registered twice"):
        table.rep(0x10, rep_input_size=8)(lambda ctx, call, elements: RepResult(HvStatus.SUCCESS, 0))


def test_guest_fault_is_an_exception_type() -> None:
    assert issubclass(GuestFault, Exception)
