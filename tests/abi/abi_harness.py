"""Synthetic hypercall table, guest set-up and outcome checks shared by the ABI tests.

No partition model: the context is a small recorder (:class:`Ctx`) and the table holds one synthetic handler
per hypercall *shape* (simple without input, simple with fixed input/output, wide input, variable header,
rep with input elements, rep with input+output elements, rep with variable header, gated, slow-only).
Inputs are tagged so a handler can tell which element it was given: rep element ``i`` is the u64
``ELEM_TAG + i`` and variable-header QWORD ``j`` is ``VAR_TAG + j``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from msr.faults import Fault, GuestFault
from viridian.abi.control import HypercallControl, decode_result
from viridian.abi.dispatch import (
    DispatchPolicy,
    HypercallCall,
    HypercallOutcome,
    HypercallTable,
    RepResult,
    SimpleResult,
)
from viridian.abi.memory import BytesMemory
from viridian.abi.registers import M32, M64, HypercallRegisters, fast_output_capacity
from viridian.tlfs.status import HvStatus

OK = HvStatus.SUCCESS
ELEM_TAG = 0x5EED_0000_0000_0000
VAR_TAG = 0x7A40_0000_0000_0000
RAM_SIZE = 0x10000
IN_GPA = 0x2000
OUT_GPA = 0x5000
FILL = 0xA5  # guest RAM before every call
REG_PAD = 0xEE  # unused bytes of fast input registers
CONVS = ("slow", "fast", "xmm")
MODES = (True, False)  # long_mode: x64 / x86
MODE_IDS = ("x64", "x86")


def u64(value: int) -> bytes:
    return (value & M64).to_bytes(8, "little")


def qwords(data: bytes) -> list[int]:
    return [int.from_bytes(data[i : i + 8], "little") for i in range(0, len(data), 8)]


def xor5a(data: bytes) -> bytes:
    return bytes(b ^ 0x5A for b in data)


# -- the recording context -----------------------------------------------------------------------------
@dataclass
class Ctx:
    """What the synthetic handlers read (switches) and write (a record of what they were given)."""

    allow: bool = True  # gate of the gated call
    status: HvStatus = OK  # status of simple calls
    fail_at: int | None = None  # absolute rep index whose element fails with fail_status
    fail_status: HvStatus = HvStatus.INVALID_PARAMETER
    cut: int | None = None  # a rep handler's own time-out: stop (SUCCESS) after this many elements
    boom: bool = False  # raise RuntimeError (a host bug)
    guest_fault: Fault | None = None  # raise GuestFault
    calls: list[HypercallCall] = field(default_factory=list)
    seen: list[int] = field(default_factory=list)  # rep indices processed, in order
    batches: list[int] = field(default_factory=list)  # elements handed to each rep invocation


def _enter(ctx: Ctx, call: HypercallCall) -> None:
    ctx.calls.append(call)
    if ctx.boom:
        raise RuntimeError("synthetic host bug")
    if ctx.guest_fault is not None:
        raise GuestFault(ctx.guest_fault)


# -- shapes --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shape:
    name: str
    code: int
    rep: bool
    input_size: int
    output_size: int = 0
    rep_input: int = 0
    rep_output: int = 0
    var_header: bool = False
    fast_ok: bool = True

    def in_len(self, count: int = 0, var_q: int = 0) -> int:
        return self.input_size + 8 * var_q + count * self.rep_input

    def out_len(self, count: int = 0) -> int:
        return self.output_size + count * self.rep_output


NOOP = Shape("noop", 0x0101, False, 0)
ECHO = Shape("echo", 0x0102, False, 16, 16)
WIDE = Shape("wide", 0x0103, False, 40, 24)
VARHDR = Shape("varhdr", 0x0104, False, 8, 8, var_header=True)
REP_IN = Shape("rep_in", 0x0105, True, 8, rep_input=8)
REP_IO = Shape("rep_io", 0x0106, True, 8, rep_input=8, rep_output=8)
REP_VAR = Shape("rep_var", 0x0107, True, 8, rep_input=8, rep_output=16, var_header=True)
GATED = Shape("gated", 0x0108, False, 8)
SLOW_ONLY = Shape("slow_only", 0x0109, False, 8, 8, fast_ok=False)
SHAPES = (NOOP, ECHO, WIDE, VARHDR, REP_IN, REP_IO, REP_VAR, GATED, SLOW_ONLY)
SIMPLE_SHAPES = tuple(s for s in SHAPES if not s.rep)
REP_SHAPES = tuple(s for s in SHAPES if s.rep)
UNKNOWN_CODE = 0x0042  # not in TABLE


def simple_output(shape: Shape, header: bytes, var: bytes) -> bytes:
    """What each simple synthetic call answers on success."""
    if shape is ECHO:
        return xor5a(header)
    if shape is WIDE:
        return xor5a(header[-24:])
    if shape is VARHDR:
        return u64(sum(qwords(header + var)))
    if shape is SLOW_ONLY:
        return xor5a(header)
    return b""


def rep_output(shape: Shape, header: bytes, element: bytes) -> bytes:
    """What each rep synthetic call answers per element."""
    if shape is REP_IO:
        return xor5a(element)
    if shape is REP_VAR:
        return xor5a(element) + header
    return b""


TABLE: HypercallTable[Ctx] = HypercallTable("abi-tests")


def _simple(shape: Shape) -> None:
    gate: Callable[[Ctx], bool] | None = (lambda ctx: ctx.allow) if shape is GATED else None

    def handler(ctx: Ctx, call: HypercallCall) -> SimpleResult:
        _enter(ctx, call)
        if ctx.status != OK:  # output offered on failure must never reach the guest
            return ctx.status, b"\xff" * shape.output_size
        out = simple_output(shape, call.header, call.var_header)
        return (OK, out) if out else OK

    TABLE.simple(shape.code, input_size=shape.input_size, output_size=shape.output_size,
                 var_header=shape.var_header, fast=shape.fast_ok, gate=gate, name=shape.name,
                 cite="synthetic")(handler)


def _rep(shape: Shape) -> None:
    def handler(ctx: Ctx, call: HypercallCall, elements: list[bytes]) -> RepResult:
        _enter(ctx, call)
        ctx.batches.append(len(elements))
        outputs: list[bytes] = []
        for k, element in enumerate(elements):
            index = call.control.rep_start + k
            if ctx.cut is not None and k >= ctx.cut:
                return RepResult(OK, k, tuple(outputs))
            if ctx.fail_at == index:
                return RepResult(ctx.fail_status, k, tuple(outputs))
            ctx.seen.append(int.from_bytes(element[:8], "little") - ELEM_TAG)
            outputs.append(rep_output(shape, call.header, element))
        return RepResult(OK, len(elements), tuple(outputs))

    TABLE.rep(shape.code, input_size=shape.input_size, rep_input_size=shape.rep_input,
              rep_output_size=shape.rep_output, var_header=shape.var_header, fast=shape.fast_ok,
              name=shape.name, cite="synthetic")(handler)


for _shape in SHAPES:
    (_rep if _shape.rep else _simple)(_shape)


# -- inputs --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Payload:
    header: bytes
    var: bytes
    elements: tuple[bytes, ...]

    @property
    def block(self) -> bytes:
        return self.header + self.var + b"".join(self.elements)

    def output(self, shape: Shape, start: int = 0, done: int | None = None) -> bytes:
        """Expected output bytes of elements start..start+done (rep) or the whole output (simple)."""
        if not shape.rep:
            return simple_output(shape, self.header, self.var)
        stop = len(self.elements) if done is None else start + done
        return b"".join(rep_output(shape, self.header, e) for e in self.elements[start:stop])


def payload(shape: Shape, count: int = 0, var_q: int = 0) -> Payload:
    header = bytes((0x10 + i) & 0xFF for i in range(shape.input_size))
    var = b"".join(u64(VAR_TAG + j) for j in range(var_q))
    elements = tuple(u64(ELEM_TAG + i).ljust(shape.rep_input, b"\x01") for i in range(count))
    return Payload(header, var, elements)


def control(shape: Shape | int, *, fast: bool = False, count: int = 0, start: int = 0, var_q: int = 0,
            extra: int = 0) -> int:
    code = shape if isinstance(shape, int) else shape.code
    return HypercallControl(code, fast, var_q, False, count, start).encode() | extra


# -- registers -----------------------------------------------------------------------------------------
GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "r8")


def junk_regs(long_mode: bool) -> HypercallRegisters:
    """Every register holds a distinct non-zero value (upper halves too, which x86 must ignore)."""
    regs = HypercallRegisters(long_mode=long_mode)
    for i, name in enumerate(GPRS):
        setattr(regs, name, 0xD00D_0000_0000_0000 | ((i + 1) << 40) | ((0x1111_1111 * (i + 1)) & M32))
    regs.xmm = [(0xC0DE_0000 + n) << 96 | (0xBEEF + n) for n in range(6)]
    return regs


def set_pair(regs: HypercallRegisters, which: str, value: int) -> None:
    """Set the control word (``control``), param1 or param2 by the mode's convention."""
    x64 = {"control": ("rcx",), "param1": ("rdx",), "param2": ("r8",)}
    x86 = {"control": ("rdx", "rax"), "param1": ("rbx", "rcx"), "param2": ("rdi", "rsi")}
    if regs.long_mode:
        setattr(regs, x64[which][0], value & M64)
        return
    hi, lo = x86[which]
    setattr(regs, hi, getattr(regs, hi) & ~M32 | (value >> 32) & M32)
    setattr(regs, lo, getattr(regs, lo) & ~M32 | value & M32)


def load_fast(regs: HypercallRegisters, block: bytes) -> None:
    """Place a fast input block in RDX/R8 (EBX:ECX/EDI:ESI) and XMM0-5; unused bytes are REG_PAD."""
    raw = block.ljust(112, bytes([REG_PAD]))
    set_pair(regs, "param1", int.from_bytes(raw[0:8], "little"))
    set_pair(regs, "param2", int.from_bytes(raw[8:16], "little"))
    regs.xmm = [int.from_bytes(raw[16 + 16 * n : 32 + 16 * n], "little") for n in range(6)]


def reg(regs: HypercallRegisters, name: str) -> int:
    if name.startswith("xmm"):
        return regs.xmm[int(name[3:])]
    return int(getattr(regs, name))


def apply(regs: HypercallRegisters, writes: dict[str, int]) -> HypercallRegisters:
    """The registers the guest sees after the machine applied an outcome."""
    new = copy.deepcopy(regs)
    for name, value in writes.items():
        if name.startswith("xmm"):
            new.xmm[int(name[3:])] = value
        else:
            setattr(new, name, value)
    return new


def result_keys(long_mode: bool) -> set[str]:
    return {"rax"} if long_mode else {"rax", "rdx"}


def control_keys(long_mode: bool) -> set[str]:
    return {"rcx"} if long_mode else {"rax", "rdx"}


def result_of(outcome: HypercallOutcome, long_mode: bool) -> int:
    """The 64-bit result value the outcome writes (RAX or EDX:EAX)."""
    w = outcome.registers
    if long_mode:
        return w["rax"]
    assert w["rax"] <= M32 and w["rdx"] <= M32
    return w["rdx"] << 32 | w["rax"]


def control_of(outcome: HypercallOutcome, long_mode: bool) -> int:
    """The rewritten input value of a continuation (RCX or EDX:EAX)."""
    w = outcome.registers
    if long_mode:
        return w["rcx"]
    assert w["rax"] <= M32 and w["rdx"] <= M32
    return w["rdx"] << 32 | w["rax"]


def output_units(in_len: int, offset: int, length: int) -> set[str]:
    """Register names the fast output bytes [offset, offset+length) of the output area land in."""
    names: set[str] = set()
    base = (in_len + 15) // 16 * 16
    for pos in range(base + offset, base + offset + length):
        unit = pos // 16
        names |= {"rdx", "r8"} if unit == 0 else {f"xmm{unit - 1}"}
    return names


def output_area(regs: HypercallRegisters) -> bytes:
    """RDX, R8, XMM0-5 as the 112-byte fast register block."""
    return u64(regs.rdx) + u64(regs.r8) + b"".join((x).to_bytes(16, "little") for x in regs.xmm)


# -- a prepared guest ----------------------------------------------------------------------------------
@dataclass
class Guest:
    shape: Shape
    regs: HypercallRegisters
    memory: BytesMemory
    policy: DispatchPolicy
    ctx: Ctx
    data: Payload
    before: bytes = b""

    def run(self) -> HypercallOutcome:
        self.before = bytes(self.memory.buffer)
        return TABLE.dispatch(self.ctx, self.regs, self.memory, self.policy)

    def changed(self) -> list[int]:
        after = bytes(self.memory.buffer)
        return [i for i, (a, b) in enumerate(zip(self.before, after, strict=True)) if a != b]

    def assert_memory(self, gpa: int = OUT_GPA, data: bytes = b"") -> None:
        """Guest RAM changed only in [gpa, gpa+len(data)), which now holds ``data``."""
        after = bytes(self.memory.buffer)
        assert after[gpa : gpa + len(data)] == data
        assert after[:gpa] == self.before[:gpa]
        assert after[gpa + len(data) :] == self.before[gpa + len(data) :]


def guest(shape: Shape, conv: str = "slow", long_mode: bool = True, *, count: int = 0, start: int = 0,
          var_q: int = 0, in_gpa: int = IN_GPA, out_gpa: int = OUT_GPA, extra: int = 0,
          policy: DispatchPolicy | None = None, ctx: Ctx | None = None) -> Guest:
    """A guest about to issue ``shape`` by convention ``conv`` (slow / fast / xmm) in x64 or x86 mode."""
    data = payload(shape, count, var_q)
    memory = BytesMemory(bytearray([FILL]) * RAM_SIZE)
    regs = junk_regs(long_mode)
    set_pair(regs, "control", control(shape, fast=conv != "slow", count=count, start=start, var_q=var_q,
                                      extra=extra))
    if conv == "slow":
        if data.block and memory.contains(in_gpa, len(data.block)):
            memory.write(in_gpa, data.block)
        set_pair(regs, "param1", in_gpa)
        set_pair(regs, "param2", out_gpa)
    else:
        load_fast(regs, data.block)
    if policy is None:
        policy = DispatchPolicy(xmm_input=conv == "xmm", xmm_output=conv == "xmm")
    return Guest(shape, regs, memory, policy, ctx or Ctx(), data)


def assert_result(outcome: HypercallOutcome, long_mode: bool, status: HvStatus, reps: int = 0,
                  extra_keys: frozenset[str] = frozenset()) -> None:
    """A completed call: RIP advances, result value written by the mode's convention, nothing else."""
    assert outcome.fault is None
    assert not outcome.continued and outcome.advance_rip
    assert outcome.status == status and outcome.reps_completed == reps
    assert set(outcome.registers) == result_keys(long_mode) | extra_keys
    assert decode_result(result_of(outcome, long_mode)) == (status, reps)
    assert result_of(outcome, long_mode) == status | reps << 32


def assert_ud(outcome: HypercallOutcome) -> None:
    assert outcome.fault is not None and outcome.fault.vector == 6
    assert outcome.registers == {} and not outcome.advance_rip and outcome.status is None


def assert_fast_output(g: Guest, outcome: HypercallOutcome, start: int = 0, done: int | None = None) -> None:
    """Only the output units are written; bytes before the new output keep their value (earlier reps),
    the output bytes are exact, the rest of the last unit is zero and later units are untouched."""
    shape, count = g.shape, len(g.data.elements)
    in_len = shape.in_len(count, len(g.data.var) // 8)
    size = shape.rep_output if shape.rep else shape.output_size
    done = (count - start if shape.rep else 1) if done is None else done
    expected = g.data.output(shape, start, done)
    units = output_units(in_len, start * size, len(expected)) if expected else set()
    assert set(outcome.registers) == {"rax"} | units
    old, new = output_area(g.regs), output_area(apply(g.regs, outcome.registers))
    lo = (in_len + 15) // 16 * 16 + start * size
    hi = lo + len(expected)
    end = (hi + 15) // 16 * 16 if expected else hi
    assert new[:lo] == old[:lo]
    assert new[lo:hi] == expected
    assert new[hi:end] == bytes(end - hi)
    assert new[end:] == old[end:]


# -- the expected verdict of a well-formed call -----------------------------------------------------------
Verdict = HvStatus | Literal["#UD"]
COUNT = 3  # reps of a rep shape in the matrix


def sizes(shape: Shape) -> dict[str, int]:
    return {"count": COUNT if shape.rep else 0, "var_q": 2 if shape.var_header else 0}


def verdict(shape: Shape, conv: str, long_mode: bool) -> Verdict:
    """TLFS §3.7 for a well-formed control word. Slow: always fine. Fast: slow-only call -> 3; more than
    16 bytes of input needs XMM input (x64 + offered) else #UD; > 112 bytes -> 3; any output needs XMM
    output (x64 + offered) else #UD; output beyond the registers left after the input -> 3."""
    if conv == "slow":
        return OK
    if not shape.fast_ok:
        return HvStatus.INVALID_HYPERCALL_INPUT
    xmm = conv == "xmm" and long_mode
    n = sizes(shape)
    in_len, out_len = shape.in_len(n["count"], n["var_q"]), shape.out_len(n["count"])
    if in_len > 16 and not xmm:
        return "#UD"
    if in_len > 112:
        return HvStatus.INVALID_HYPERCALL_INPUT
    if out_len and not xmm:
        return "#UD"
    if out_len > fast_output_capacity(in_len):
        return HvStatus.INVALID_HYPERCALL_INPUT
    return OK
