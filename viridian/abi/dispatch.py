"""Declarative hypercall table and the generic dispatcher (TLFS §3 "Hypercall interface").

A handler is registered with its shape beside its spec citation::

    calls = HypercallTable[VirtualProcessor]("hyper-v")

    @calls.simple(HvCall.NOTIFY_LONG_SPIN_WAIT, input_size=8, gate=..., cite="TLFS §14.5.1")
    def notify_long_spin_wait(vp, call: HypercallCall) -> HvStatus: ...

    @calls.rep(HvCall.FLUSH_VIRTUAL_ADDRESS_LIST, input_size=24, rep_input_size=8, cite=...)
    def flush_list(vp, call: HypercallCall, elements: list[bytes]) -> RepResult: ...

The dispatcher owns every rule common to all calls: control-word validation, fast/XMM/slow input,
GPA alignment and page crossing, rep iteration with partial completion and continuation, output
writing, and the result value. Handlers see bytes and return a status (plus output bytes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from msr.faults import Fault, GuestFault, ud
from viridian.abi.control import HypercallControl, result_value
from viridian.abi.memory import GuestMemory, GuestMemoryError
from viridian.abi.registers import HypercallRegisters, fast_output_capacity
from viridian.tlfs.hypercalls import FAST_INPUT_MAX, HV_PAGE_SIZE, XMM_FAST_INPUT_MAX
from viridian.tlfs.status import HvStatus

log = logging.getLogger(__name__)
C = TypeVar("C")

SimpleResult = HvStatus | tuple[HvStatus, bytes]


@dataclass(frozen=True, slots=True)
class RepResult:
    """What a rep handler did with the elements it was given: ``completed`` of them succeeded (in
    order); ``status`` is SUCCESS or the error of element ``completed``; ``outputs`` has one entry
    per completed element for calls with rep output."""

    status: HvStatus
    completed: int
    outputs: tuple[bytes, ...] = ()


SimpleHandler = Callable[[C, "HypercallCall"], SimpleResult]
RepHandler = Callable[[C, "HypercallCall", list[bytes]], RepResult]


@dataclass(frozen=True)
class HypercallSpec(Generic[C]):
    """One hypercall as declared: code, shape, block sizes, what gates it, where the spec says so."""

    code: int
    name: str
    rep: bool
    input_size: int  # fixed header bytes
    output_size: int = 0  # fixed output bytes (simple calls)
    rep_input_size: int = 0
    rep_output_size: int = 0
    var_header: bool = False
    fast: bool = True  # fast (register) form allowed
    gate: Callable[[C], bool] | None = None  # False -> HV_STATUS_ACCESS_DENIED
    cite: str = ""
    simple_handler: SimpleHandler[C] | None = None
    rep_handler: RepHandler[C] | None = None


@dataclass(frozen=True, slots=True)
class HypercallCall:
    """The decoded call a handler receives."""

    control: HypercallControl
    header: bytes  # fixed header
    var_header: bytes  # VariableHeaderSize * 8 bytes
    long_mode: bool
    output_gpa: int | None  # slow calls only

    @property
    def fast(self) -> bool:
        return self.control.fast


@dataclass(frozen=True, slots=True)
class DispatchPolicy:
    """Partition-level switches the dispatcher needs (from the CPUID offer)."""

    xmm_input: bool = False  # 0x40000003.EDX[4]
    xmm_output: bool = False  # 0x40000003.EDX[15]
    rep_budget: int = 256  # reps per exit before a time-out continuation (TLFS: ~50 us)


@dataclass
class HypercallOutcome:
    """What the machine must do: write ``registers``, advance RIP or not, or inject ``fault``."""

    code: int
    name: str
    status: HvStatus | None = None
    reps_completed: int = 0
    fault: Fault | None = None
    registers: dict[str, int] = field(default_factory=dict)
    advance_rip: bool = True
    continued: bool = False  # rep time-out: RIP not advanced, rep start updated

    @property
    def ok(self) -> bool:
        return self.fault is None and self.status == HvStatus.SUCCESS


class _Reject(Exception):
    def __init__(self, status: HvStatus) -> None:
        self.status = status


class HypercallTable(Generic[C]):
    """Registry of hypercall handlers; :meth:`dispatch` runs one guest hypercall against it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.specs: dict[int, HypercallSpec[C]] = {}

    # -- registration ------------------------------------------------------------------------------
    def simple(
        self,
        code: int,
        *,
        input_size: int = 0,
        output_size: int = 0,
        var_header: bool = False,
        fast: bool = True,
        gate: Callable[[C], bool] | None = None,
        name: str | None = None,
        cite: str = "",
    ) -> Callable[[SimpleHandler[C]], SimpleHandler[C]]:
        def deco(fn: SimpleHandler[C]) -> SimpleHandler[C]:
            self._add(
                HypercallSpec(
                    code, name or fn.__name__, False, input_size, output_size, 0, 0, var_header, fast,
                    gate, cite, simple_handler=fn,
                )
            )
            return fn

        return deco

    def rep(
        self,
        code: int,
        *,
        input_size: int = 0,
        rep_input_size: int = 0,
        rep_output_size: int = 0,
        var_header: bool = False,
        fast: bool = True,
        gate: Callable[[C], bool] | None = None,
        name: str | None = None,
        cite: str = "",
    ) -> Callable[[RepHandler[C]], RepHandler[C]]:
        def deco(fn: RepHandler[C]) -> RepHandler[C]:
            self._add(
                HypercallSpec(
                    code, name or fn.__name__, True, input_size, 0, rep_input_size, rep_output_size,
                    var_header, fast, gate, cite, rep_handler=fn,
                )
            )
            return fn

        return deco

    def _add(self, spec: HypercallSpec[C]) -> None:
        if spec.code in self.specs:
            raise ValueError(f"hypercall {spec.code:#x} registered twice")
        self.specs[spec.code] = spec

    # -- dispatch ----------------------------------------------------------------------------------
    def dispatch(
        self, ctx: C, regs: HypercallRegisters, memory: GuestMemory, policy: DispatchPolicy
    ) -> HypercallOutcome:
        """Run one hypercall. Never raises: every path ends in a result value or a fault."""
        control = HypercallControl.decode(regs.control)
        spec = self.specs.get(control.code)
        out = HypercallOutcome(control.code, spec.name if spec else f"unknown({control.code:#06x})")
        # TLFS §3.2: hypercalls from CPL > 0 or real mode raise #UD.
        if regs.cpl != 0 or not regs.protected:
            out.fault, out.advance_rip = ud("hypercall from CPL > 0 or real mode"), False
            return out
        try:
            self._run(ctx, spec, control, regs, memory, policy, out)
        except _Reject as rej:
            self._finish(out, regs, rej.status, 0)
        except _Fault as flt:
            out.fault, out.advance_rip = flt.fault, False
        except GuestFault as gf:  # docs/architecture.md: handlers may raise GuestFault; it becomes a fault
            out.registers.clear()
            out.fault, out.advance_rip = gf.fault, False
        except Exception:  # host bug: never let it reach the vCPU loop
            log.exception("hypercall %s raised; answering INVALID_HYPERCALL_INPUT", out.name)
            out.registers.clear()
            self._finish(out, regs, HvStatus.INVALID_HYPERCALL_INPUT, 0)
        return out

    def _run(
        self,
        ctx: C,
        spec: HypercallSpec[C] | None,
        control: HypercallControl,
        regs: HypercallRegisters,
        memory: GuestMemory,
        policy: DispatchPolicy,
        out: HypercallOutcome,
    ) -> None:
        if spec is None:  # TLFS §3.8: unknown call code
            raise _Reject(HvStatus.INVALID_HYPERCALL_CODE)
        if spec.gate is not None and not spec.gate(ctx):  # privilege not held (TLFS §3.8; KVM order)
            raise _Reject(HvStatus.ACCESS_DENIED)
        # TLFS §3.7: RsvdZ control bits, rep count/start rules, variable header only where accepted.
        if control.reserved or control.nested:
            raise _Reject(HvStatus.INVALID_HYPERCALL_INPUT)
        if spec.rep:
            if control.rep_count == 0 or control.rep_start >= control.rep_count:
                raise _Reject(HvStatus.INVALID_HYPERCALL_INPUT)
        elif control.rep_count or control.rep_start:
            raise _Reject(HvStatus.INVALID_HYPERCALL_INPUT)
        if control.var_header_qwords and not spec.var_header:
            raise _Reject(HvStatus.INVALID_HYPERCALL_INPUT)
        if control.fast and not spec.fast:
            raise _Reject(HvStatus.INVALID_HYPERCALL_INPUT)

        var_len = control.var_header_qwords * 8
        header_len = spec.input_size + var_len
        in_len = header_len + control.rep_count * spec.rep_input_size
        out_len = spec.output_size + control.rep_count * spec.rep_output_size
        output_gpa: int | None = None
        if control.fast:
            xmm = in_len > FAST_INPUT_MAX
            # TLFS §3.7.x: XMM fast input needs 0x40000003.EDX[4]; using it unadvertised -> #UD (KVM).
            if xmm and (not policy.xmm_input or not regs.long_mode):
                raise _Fault(ud("XMM fast hypercall input not available"))
            if in_len > XMM_FAST_INPUT_MAX:
                raise _Reject(HvStatus.INVALID_HYPERCALL_INPUT)
            if out_len and (not policy.xmm_output or not regs.long_mode):
                raise _Fault(ud("XMM fast hypercall output not available"))
            # TLFS §3.7 "XMM fast output": #UD only when the interface is not offered; output that does not
            # fit the registers after the input is a bad input value, like input > 112 bytes (OpenVMM too).
            if out_len > fast_output_capacity(in_len):
                raise _Reject(HvStatus.INVALID_HYPERCALL_INPUT)
            block = regs.fast_input_block(in_len, xmm)
        else:
            in_gpa, output_gpa = regs.param1, regs.param2
            block = _read_block(memory, in_gpa, in_len) if in_len else b""
            if out_len:
                _check_block(memory, output_gpa, out_len)
                if in_len and in_gpa < output_gpa + out_len and output_gpa < in_gpa + in_len:
                    # TLFS §3.7: input and output may not overlap (result undefined); we refuse.
                    raise _Reject(HvStatus.INVALID_PARAMETER)
        call = HypercallCall(control, block[: spec.input_size], block[spec.input_size : header_len],
                             regs.long_mode, output_gpa)

        if not spec.rep:
            assert spec.simple_handler is not None
            res = spec.simple_handler(ctx, call)
            status, output = (res, b"") if isinstance(res, HvStatus) else res
            output = output[: spec.output_size]  # a call without output never touches its (unchecked) GPA
            if output and status == HvStatus.SUCCESS:
                self._write_output(out, regs, memory, call, in_len, 0, output)
            self._finish(out, regs, status, 0)
            return

        assert spec.rep_handler is not None
        start, count = control.rep_start, control.rep_count
        # Fast rep calls are tiny (<= 112 bytes) and finish in one go: register output cannot be resumed.
        stop = count if control.fast else min(count, start + max(1, policy.rep_budget))
        size = spec.rep_input_size
        elements = [block[header_len + i * size : header_len + (i + 1) * size] for i in range(start, stop)]
        result = spec.rep_handler(ctx, call, elements)
        done = max(0, min(result.completed, len(elements)))
        if spec.rep_output_size and done:
            data = b"".join(o[: spec.rep_output_size].ljust(spec.rep_output_size, b"\0") for o in result.outputs[:done])
            self._write_output(out, regs, memory, call, in_len, start * spec.rep_output_size, data)
        reps = start + done
        if result.status == HvStatus.SUCCESS and reps < count:
            # TLFS §3.7.x rep time-out: update RepStartIndex in the input value, do not advance RIP.
            out.status, out.reps_completed, out.continued, out.advance_rip = None, reps, True, False
            out.registers.update(regs.control_writes(control.with_rep_start(reps).encode()))
            return
        self._finish(out, regs, result.status, reps)

    @staticmethod
    def _write_output(
        out: HypercallOutcome,
        regs: HypercallRegisters,
        memory: GuestMemory,
        call: HypercallCall,
        in_len: int,
        offset: int,
        data: bytes,
    ) -> None:
        if call.fast:
            # Output of reps before RepStartIndex stays as the earlier execution left it (TLFS §3.7).
            out.registers.update(regs.fast_output_writes(in_len, data, offset))
        else:
            assert call.output_gpa is not None
            try:
                memory.write(call.output_gpa + offset, data)
            except GuestMemoryError:  # TLFS §3.8 common status: GPA not in the (writable) GPA space
                raise _Reject(HvStatus.INVALID_ALIGNMENT) from None

    @staticmethod
    def _finish(out: HypercallOutcome, regs: HypercallRegisters, status: HvStatus, reps: int) -> None:
        out.status, out.reps_completed = status, reps
        out.registers.update(regs.result_writes(result_value(status, reps)))


class _Fault(Exception):
    def __init__(self, fault: Fault) -> None:
        self.fault = fault


def _check_block(memory: GuestMemory, gpa: int, length: int) -> None:
    """TLFS §3.7: blocks are 8-byte aligned, do not cross a page, and lie in the GPA space."""
    if gpa % 8 or (gpa % HV_PAGE_SIZE) + length > HV_PAGE_SIZE or gpa + length > memory.size:
        raise _Reject(HvStatus.INVALID_ALIGNMENT)


def _read_block(memory: GuestMemory, gpa: int, length: int) -> bytes:
    _check_block(memory, gpa, length)
    try:
        return memory.read(gpa, length)
    except GuestMemoryError:
        raise _Reject(HvStatus.INVALID_ALIGNMENT) from None
