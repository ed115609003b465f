"""Property tests: dispatch never raises and every outcome is well-formed, for random input values,
registers, guest memory, policies and handler behaviour."""

from __future__ import annotations

import random
from typing import TypeVar

from abi_harness import SHAPES, TABLE, UNKNOWN_CODE, Ctx, control_keys, control_of, result_keys, result_of
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from viridian.abi.control import HypercallControl, decode_result
from viridian.abi.dispatch import DispatchPolicy, HypercallOutcome
from viridian.abi.memory import BytesMemory
from viridian.abi.registers import M32, M64, M128, HypercallRegisters
from viridian.tlfs import hypercalls as hc
from viridian.tlfs.status import HvStatus

RAM = 0x6000
U64 = st.integers(0, M64)
BY_CODE = {s.code: s for s in SHAPES}
T = TypeVar("T")


def weighted(*choices: tuple[int, st.SearchStrategy[T]]) -> st.SearchStrategy[T]:
    """Pick a strategy with the given relative weight (``one_of`` drops duplicate branches)."""
    table = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.integers(0, len(table) - 1).flatmap(lambda i: table[i])


CODES = weighted((5, st.sampled_from(list(BY_CODE))), (1, st.sampled_from([UNKNOWN_CODE, 0, 0xFFFF])))
# Input values: fully random, or assembled from plausible fields so the deep paths get exercised.
FIELDS_CONTROL = st.builds(
    lambda code, fast, var_q, count, start, rsvd: (
        HypercallControl(code, fast, var_q, False, count, start).encode() | rsvd),
    CODES, st.booleans(),
    weighted((2, st.just(0)), (1, st.integers(0, 14)), (1, st.integers(0, 0x3FF))),
    weighted((2, st.just(0)), (2, st.integers(1, 16)), (1, st.integers(0, 0xFFF))),
    weighted((2, st.just(0)), (1, st.integers(0, 16))),
    weighted((6, st.just(0)), (1, st.sampled_from([1 << b for b in (27, 31, 44, 63)]))),
)
CONTROLS = weighted((1, U64), (4, FIELDS_CONTROL))
# GPAs / parameters: random, aligned inside RAM, or near a page end, the end of RAM or 2^64.
GPAS = weighted(
    (1, U64),
    (4, st.integers(0, RAM // 8 - 1).map(lambda q: q * 8)),
    (1, st.integers(1, 64).map(lambda n: 0x2000 - 8 * n)),
    (1, st.sampled_from([RAM - 8, RAM, (1 << 64) - 8, (1 << 64) - 0x1000, 1 << 63])),
)


@st.composite
def well_formed(draw: st.DrawFn) -> int:
    """A control word a shape accepts (the failures left are GPA, size, policy and handler ones)."""
    shape = draw(st.sampled_from(SHAPES))
    count = draw(st.integers(1, 40)) if shape.rep else 0
    start = draw(st.integers(0, count - 1)) if shape.rep else 0
    var_q = draw(st.integers(0, 12)) if shape.var_header else 0
    fast = shape.fast_ok and draw(st.booleans())
    return HypercallControl(shape.code, fast, var_q, False, count, start).encode()


@st.composite
def registers(draw: st.DrawFn, controls: st.SearchStrategy[int] = CONTROLS, legal: bool = False) -> HypercallRegisters:
    long_mode = draw(st.booleans())
    regs = HypercallRegisters(
        long_mode=long_mode,
        cpl=0 if legal else draw(st.sampled_from([0] * 12 + [1, 2, 3])),
        protected=legal or long_mode or draw(st.sampled_from([True, True, True, False])),
        rax=draw(U64), rbx=draw(U64), rcx=draw(U64), rdx=draw(U64), rsi=draw(U64), rdi=draw(U64), r8=draw(U64),
        xmm=draw(st.lists(st.integers(0, M128), min_size=6, max_size=6)),
    )
    control = draw(controls)
    in_gpa, out_gpa = draw(GPAS), draw(GPAS)
    if long_mode:
        regs.rcx, regs.rdx, regs.r8 = control, in_gpa, out_gpa
    else:
        regs.rdx, regs.rax = regs.rdx & ~M32 | control >> 32, regs.rax & ~M32 | control & M32
        regs.rbx, regs.rcx = regs.rbx & ~M32 | in_gpa >> 32, regs.rcx & ~M32 | in_gpa & M32
        regs.rdi, regs.rsi = regs.rdi & ~M32 | out_gpa >> 32, regs.rsi & ~M32 | out_gpa & M32
    return regs


CTXS = st.builds(
    Ctx,
    allow=st.sampled_from([True, True, True, False]),
    status=weighted((2, st.just(HvStatus.SUCCESS)), (1, st.sampled_from(list(HvStatus)))),
    fail_at=weighted((2, st.none()), (1, st.integers(0, 20))),
    fail_status=st.sampled_from(list(HvStatus)),
    cut=weighted((3, st.none()), (1, st.integers(1, 4))),
    boom=st.sampled_from([False] * 7 + [True]),
)
POLICIES = st.builds(DispatchPolicy, st.booleans(), st.booleans(),
                     weighted((2, st.integers(0, 8)), (1, st.integers(0, 300))))
SETTINGS = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check_outcome(outcome: HypercallOutcome, regs: HypercallRegisters) -> None:
    control = HypercallControl.decode(regs.control)
    legal = regs.cpl == 0 and regs.protected
    if outcome.fault is not None:
        assert outcome.fault.vector == 6  # #UD is the only fault the ABI raises
        assert outcome.registers == {} and not outcome.advance_rip and outcome.status is None
        assert not outcome.continued
        assert not legal or control.fast  # a memory-based call never faults
        return
    assert legal
    if outcome.continued:
        assert outcome.status is None and not outcome.advance_rip
        keys = set(outcome.registers)
        assert control_keys(regs.long_mode) <= keys
        extra = keys - control_keys(regs.long_mode)  # fast rep output of the reps done so far
        assert not extra or (regs.long_mode and control.fast)
        new = HypercallControl.decode(control_of(outcome, regs.long_mode))
        assert new == control.with_rep_start(outcome.reps_completed)
        # Slow calls continue at the rep budget or when the handler times out; fast ones only for the latter.
        assert control.rep_start < new.rep_start < control.rep_count
        return
    assert isinstance(outcome.status, HvStatus) and outcome.advance_rip
    keys = set(outcome.registers)
    assert result_keys(regs.long_mode) <= keys
    extra = keys - result_keys(regs.long_mode)
    assert not extra or (regs.long_mode and control.fast)
    assert extra <= {"rdx", "r8", *(f"xmm{n}" for n in range(6))}
    assert decode_result(result_of(outcome, regs.long_mode)) == (outcome.status, outcome.reps_completed)
    assert outcome.reps_completed <= control.rep_count
    if control.code not in BY_CODE:
        assert outcome.status == HvStatus.INVALID_HYPERCALL_CODE
    if not regs.long_mode:
        assert all(v <= M32 for v in outcome.registers.values())
    if outcome.status != HvStatus.SUCCESS:
        assert not extra  # no fast output on failure
    if control.reserved or control.nested:
        assert outcome.status in (HvStatus.INVALID_HYPERCALL_CODE, HvStatus.ACCESS_DENIED,
                                  HvStatus.INVALID_HYPERCALL_INPUT)


def check_memory(before: bytes, after: bytes, regs: HypercallRegisters) -> None:
    """Only the output block of a known slow call may change."""
    control = HypercallControl.decode(regs.control)
    shape = BY_CODE.get(control.code)
    changed = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
    if not changed:
        return
    assert shape is not None and not control.fast
    out_len = shape.out_len(control.rep_count)
    assert all(regs.param2 <= i < regs.param2 + out_len for i in changed)


@SETTINGS
@given(registers(), st.integers(0, 2**32), POLICIES, CTXS)
def test_dispatch_never_raises(regs: HypercallRegisters, seed: int, policy: DispatchPolicy, ctx: Ctx) -> None:
    memory = BytesMemory(bytearray(random.Random(seed).randbytes(RAM)))
    before = bytes(memory.buffer)
    snapshot = repr(regs)
    outcome = TABLE.dispatch(ctx, regs, memory, policy)
    event("fault" if outcome.fault else "continued" if outcome.continued else f"status {outcome.status!r}")
    assert repr(regs) == snapshot  # the ABI never mutates its input snapshot
    check_outcome(outcome, regs)
    check_memory(before, bytes(memory.buffer), regs)


@SETTINGS
@given(registers(well_formed(), legal=True), st.integers(0, 2**32), POLICIES, CTXS)
def test_well_formed_calls(regs: HypercallRegisters, seed: int, policy: DispatchPolicy, ctx: Ctx) -> None:
    """Legal environment, accepted control word: exercises GPA rules, fast/XMM, reps and handlers."""
    test_dispatch_never_raises.hypothesis.inner_test(regs, seed, policy, ctx)


@SETTINGS
@given(U64, U64, U64, st.lists(st.integers(0, M128), min_size=6, max_size=6), st.booleans(), POLICIES)
def test_fully_random_registers(rcx: int, rdx: int, r8: int, xmm: list[int], long_mode: bool,
                                policy: DispatchPolicy) -> None:
    """No structure at all: random 64-bit RCX/RDX/R8 (and the x86 pairs built from them)."""
    regs = HypercallRegisters(long_mode=long_mode, rax=rdx ^ r8, rbx=rcx ^ r8, rcx=rcx, rdx=rdx, rsi=r8 >> 7,
                              rdi=rcx >> 3, r8=r8, xmm=xmm)
    outcome = TABLE.dispatch(Ctx(), regs, BytesMemory(RAM), policy)
    check_outcome(outcome, regs)


@settings(max_examples=300, deadline=None)
@given(U64.filter(lambda v: v & hc.CONTROL_CODE_MASK not in BY_CODE), registers())
def test_unknown_codes_always_answer_invalid_code(control: int, regs: HypercallRegisters) -> None:
    regs.cpl, regs.protected = 0, True
    if regs.long_mode:
        regs.rcx = control
    else:
        regs.rdx, regs.rax = control >> 32, control & M32
    outcome = TABLE.dispatch(Ctx(), regs, BytesMemory(RAM), DispatchPolicy())
    assert outcome.status == HvStatus.INVALID_HYPERCALL_CODE and outcome.reps_completed == 0
    assert set(outcome.registers) == result_keys(regs.long_mode)
