"""Engine-free MSR emulation: declarative tables of MSRs and a chain of providers (first taker answers).

A provider is anything with ``rdmsr(ctx, index)`` / ``wrmsr(ctx, index, value)`` that returns
``NOT_MINE`` for indices it does not own. A :class:`MsrChain` asks providers in order, like a real
hypervisor (local APIC -> Hyper-V range -> architectural), and answers #GP when nobody takes the index.
Handlers never leak Python exceptions: anything unexpected becomes #GP and is recorded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import Flag
from typing import Any, Final, Generic, Protocol, TypeVar

from msr.faults import Fault, GuestFault, gp

log = logging.getLogger(__name__)

C = TypeVar("C")
C_contra = TypeVar("C_contra", contravariant=True)
MASK64: Final = (1 << 64) - 1


class _NotMine:
    _inst: _NotMine | None = None

    def __repr__(self) -> str:
        return "NOT_MINE"


NOT_MINE: Final = _NotMine()
ReadResult = int | Fault
WriteResult = None | Fault


class Access(Flag):
    R = 1
    W = 2
    RW = 3


Reader = Callable[[C], int]
Writer = Callable[[C, int], None]
Gate = Callable[[C], bool]


@dataclass
class MsrSpec(Generic[C]):
    """One MSR as declared: who reads it, who writes it, which bits are reserved, what gates it."""

    index: int
    name: str
    reader: Callable[[C], int] | None = None
    writer: Callable[[C, int], None] | None = None
    reserved: int = 0  # bits that must be zero on write (else #GP)
    gate: Callable[[C], bool] | None = None  # False -> #GP (feature not offered)
    cite: str = ""

    @property
    def access(self) -> Access:
        acc = Access(0)
        if self.reader is not None:
            acc |= Access.R
        if self.writer is not None:
            acc |= Access.W
        return acc


class MsrProvider(Protocol[C_contra]):
    def rdmsr(self, ctx: C_contra, index: int) -> ReadResult | _NotMine: ...

    def wrmsr(self, ctx: C_contra, index: int, value: int) -> WriteResult | _NotMine: ...


@dataclass
class MsrTable(Generic[C]):
    """A declarative table of MSRs: decorate handlers with :meth:`reader` / :meth:`writer`."""

    name: str
    specs: dict[int, MsrSpec[C]] = field(default_factory=dict)
    claims: Callable[[int], bool] | None = None  # indices owned even when undeclared (-> #GP)

    def _spec(self, index: int, name: str | None) -> MsrSpec[C]:
        spec = self.specs.get(index)
        if spec is None:
            spec = self.specs[index] = MsrSpec(index, name or hex(index))
        elif name:
            spec.name = name
        return spec

    def reader(
        self, index: int, *, name: str | None = None, gate: Gate[C] | None = None, cite: str = ""
    ) -> Callable[[Reader[C]], Reader[C]]:
        """Declare the read handler of ``index``; ``gate`` (if any) must hold or the access #GPs."""

        def deco(fn: Reader[C]) -> Reader[C]:
            spec = self._spec(index, name)
            spec.reader, spec.cite = fn, cite or spec.cite
            if gate is not None:
                spec.gate = gate
            return fn

        return deco

    def writer(
        self,
        index: int,
        *,
        name: str | None = None,
        reserved: int = 0,
        gate: Gate[C] | None = None,
        cite: str = "",
    ) -> Callable[[Writer[C]], Writer[C]]:
        """Declare the write handler of ``index``; set ``reserved`` bits #GP before the handler runs."""

        def deco(fn: Writer[C]) -> Writer[C]:
            spec = self._spec(index, name)
            spec.writer, spec.reserved, spec.cite = fn, reserved, cite or spec.cite
            if gate is not None:
                spec.gate = gate
            return fn

        return deco

    def register(self, spec: MsrSpec[C]) -> None:
        self.specs[spec.index] = spec

    def __iter__(self) -> Iterator[MsrSpec[C]]:
        return iter(sorted(self.specs.values(), key=lambda s: s.index))

    def __contains__(self, index: int) -> bool:
        return index in self.specs

    # -- provider protocol -------------------------------------------------------------------------
    def rdmsr(self, ctx: C, index: int) -> ReadResult | _NotMine:
        spec = self.specs.get(index)
        if spec is None:
            return gp(f"{self.name}: unimplemented MSR {index:#x}") if self._claims(index) else NOT_MINE
        if spec.gate is not None and not spec.gate(ctx):
            return gp(f"{spec.name}: not offered")
        if spec.reader is None:
            return gp(f"{spec.name}: write-only")
        return _guard(lambda: spec.reader(ctx) & MASK64, spec.name)  # type: ignore[misc]

    def wrmsr(self, ctx: C, index: int, value: int) -> WriteResult | _NotMine:
        spec = self.specs.get(index)
        if spec is None:
            return gp(f"{self.name}: unimplemented MSR {index:#x}") if self._claims(index) else NOT_MINE
        if spec.gate is not None and not spec.gate(ctx):
            return gp(f"{spec.name}: not offered")
        if spec.writer is None:
            return gp(f"{spec.name}: read-only")
        if value & spec.reserved:
            return gp(f"{spec.name}: reserved bits {value & spec.reserved:#x} set")
        writer = spec.writer
        res = _guard(lambda: writer(ctx, value & MASK64), spec.name)
        return res if isinstance(res, Fault) else None

    def _claims(self, index: int) -> bool:
        return self.claims is not None and self.claims(index)


def _guard(call: Callable[[], Any], name: str) -> Any:
    """Run a handler; guest faults become values, host bugs become #GP and a log line (never escape)."""
    try:
        return call()
    except GuestFault as exc:
        return exc.fault
    except Exception:  # the host must never crash on guest input
        log.exception("MSR handler %s raised; answering #GP", name)
        return gp(f"{name}: internal error")


@dataclass(frozen=True, slots=True)
class Bound(Generic[C]):
    """A provider paired with the context object its handlers receive (e.g. a VP)."""

    provider: MsrProvider[C]
    ctx: C

    def rdmsr(self, index: int) -> ReadResult | _NotMine:
        return self.provider.rdmsr(self.ctx, index)

    def wrmsr(self, index: int, value: int) -> WriteResult | _NotMine:
        return self.provider.wrmsr(self.ctx, index, value)


class MsrChain:
    """Providers asked in order for one vCPU; an index nobody takes raises #GP (SDM: RDMSR/WRMSR of
    a reserved or unimplemented MSR address -> #GP(0))."""

    def __init__(self, links: Iterable[Bound[Any]]) -> None:
        self.links = list(links)

    def rdmsr(self, index: int) -> ReadResult:
        index &= 0xFFFFFFFF
        for link in self.links:
            res = link.rdmsr(index)
            if res is not NOT_MINE:
                return res  # type: ignore[return-value]
        return gp(f"unknown MSR {index:#x}")

    def wrmsr(self, index: int, value: int) -> WriteResult:
        index &= 0xFFFFFFFF
        for link in self.links:
            res = link.wrmsr(index, value & MASK64)
            if res is not NOT_MINE:
                return res  # type: ignore[return-value]
        return gp(f"unknown MSR {index:#x}")
