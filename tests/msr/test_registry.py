"""msr.registry: declarative MsrTable (access, reserved bits, gates, claims) and MsrChain ordering.

Expected answers follow Intel SDM vol. 3 (RDMSR/WRMSR of an unimplemented MSR, a read-only MSR written
or a write-only one read -> #GP(0)) and docs/architecture.md (handlers never leak exceptions)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from msr import NOT_MINE, Access, Bound, Fault, GuestFault, MsrChain, MsrTable, gp, ud


@dataclass
class Ctx:
    value: int = 0
    writes: list[int] = field(default_factory=list)
    offered: bool = True


def table() -> MsrTable[Ctx]:
    t: MsrTable[Ctx] = MsrTable("test", claims=lambda i: 0x4000_0000 <= i <= 0x4000_00FF)

    @t.reader(0x4000_0001, name="RW")
    def rd(c: Ctx) -> int:
        return c.value

    @t.writer(0x4000_0001, reserved=0xFF00)
    def wr(c: Ctx, v: int) -> None:
        c.writes.append(v)
        c.value = v

    t.reader(0x4000_0002, name="RO")(lambda c: 0x1234)
    t.writer(0x4000_0003, name="WO")(lambda c, v: c.writes.append(v))
    t.reader(0x4000_0004, name="GATED", gate=lambda c: c.offered)(lambda c: 7)
    t.writer(0x4000_0004, gate=lambda c: c.offered)(lambda c, v: c.writes.append(v))

    def refuse(c: Ctx) -> int:
        raise GuestFault(ud("custom"))

    def broken(c: Ctx) -> int:
        raise KeyError("host bug")

    def broken_write(c: Ctx, v: int) -> None:
        raise ZeroDivisionError

    t.reader(0x4000_0005, name="REFUSES")(refuse)
    t.reader(0x4000_0006, name="BROKEN")(broken)
    t.writer(0x4000_0006)(broken_write)
    t.reader(0x4000_0007, name="WIDE")(lambda c: (1 << 70) | 5)
    return t


def is_gp(res: object) -> bool:
    return isinstance(res, Fault) and res.vector == 13 and res.error_code == 0


def test_declared_access() -> None:
    t = table()
    assert [(s.index, s.access) for s in t] == [
        (0x4000_0001, Access.RW), (0x4000_0002, Access.R), (0x4000_0003, Access.W), (0x4000_0004, Access.RW),
        (0x4000_0005, Access.R), (0x4000_0006, Access.RW), (0x4000_0007, Access.R)]
    assert 0x4000_0002 in t and 0x4000_0008 not in t
    assert t.specs[0x4000_0001].name == "RW" and t.specs[0x4000_0001].reserved == 0xFF00


def test_read_write_and_reserved_bits() -> None:
    t, c = table(), Ctx()
    assert t.wrmsr(c, 0x4000_0001, 0x55) is None and t.rdmsr(c, 0x4000_0001) == 0x55
    assert is_gp(t.wrmsr(c, 0x4000_0001, 0x100))  # reserved bit: #GP before the handler runs
    assert c.writes == [0x55] and t.rdmsr(c, 0x4000_0001) == 0x55


def test_read_only_and_write_only() -> None:
    t, c = table(), Ctx()
    assert t.rdmsr(c, 0x4000_0002) == 0x1234 and is_gp(t.wrmsr(c, 0x4000_0002, 0))
    assert t.wrmsr(c, 0x4000_0003, 9) is None and is_gp(t.rdmsr(c, 0x4000_0003)) and c.writes == [9]


def test_gate_not_offered_is_gp_for_every_access() -> None:
    t, c = table(), Ctx(offered=False)
    assert is_gp(t.rdmsr(c, 0x4000_0004)) and is_gp(t.wrmsr(c, 0x4000_0004, 1)) and c.writes == []
    c.offered = True
    assert t.rdmsr(c, 0x4000_0004) == 7 and t.wrmsr(c, 0x4000_0004, 1) is None


def test_claimed_range_vs_not_mine() -> None:
    t, c = table(), Ctx()
    assert is_gp(t.rdmsr(c, 0x4000_00FF)) and is_gp(t.wrmsr(c, 0x4000_0080, 0))  # owned, undeclared
    assert t.rdmsr(c, 0x4000_0100) is NOT_MINE and t.wrmsr(c, 0x10, 0) is NOT_MINE
    unclaimed: MsrTable[Ctx] = MsrTable("plain")
    assert unclaimed.rdmsr(c, 0x4000_0001) is NOT_MINE


def test_guest_fault_and_host_bug(caplog: pytest.LogCaptureFixture) -> None:
    t, c = table(), Ctx()
    res = t.rdmsr(c, 0x4000_0005)
    assert isinstance(res, Fault) and res.vector == 6 and res.reason == "custom"
    with caplog.at_level(logging.ERROR, logger="msr.registry"):
        assert is_gp(t.rdmsr(c, 0x4000_0006)) and is_gp(t.wrmsr(c, 0x4000_0006, 1))
    assert len([r for r in caplog.records if "BROKEN" in r.getMessage()]) == 2


def test_values_are_64_bit() -> None:
    t, c = table(), Ctx()
    assert t.rdmsr(c, 0x4000_0007) == 5
    assert t.wrmsr(c, 0x4000_0001, (1 << 64) | 0x7) is None and c.value == 0x7


class Fixed:
    """A provider owning one index, answering a constant (to observe chain order)."""

    def __init__(self, index: int, answer: int) -> None:
        self.index, self.answer, self.asked = index, answer, 0

    def rdmsr(self, ctx: object, index: int) -> int | object:
        self.asked += 1
        return self.answer if index == self.index else NOT_MINE

    def wrmsr(self, ctx: object, index: int, value: int) -> object | None:
        self.asked += 1
        return None if index == self.index else NOT_MINE


def test_chain_first_taker_answers_and_nobody_is_gp() -> None:
    a, b, c2 = Fixed(0x10, 1), Fixed(0x10, 2), Fixed(0x20, 3)
    chain = MsrChain([Bound(a, None), Bound(b, None), Bound(c2, None)])
    assert chain.rdmsr(0x10) == 1 and b.asked == 0  # APIC before Hyper-V before architectural
    assert chain.rdmsr(0x20) == 3
    assert is_gp(chain.rdmsr(0x30)) and is_gp(chain.wrmsr(0x30, 0))
    assert chain.wrmsr(0x1_0000_0010, 0) is None  # ECX is 32 bits: the index wraps like RDMSR's
    assert chain.rdmsr(0xFFFF_FFFF_0000_0020) == 3


def test_chain_passes_faults_through() -> None:
    t = table()
    chain = MsrChain([Bound(t, Ctx()), Bound(Fixed(0x4000_0002, 99), None)])
    assert chain.rdmsr(0x4000_0002) == 0x1234  # the table owns it: later links never asked
    assert is_gp(chain.wrmsr(0x4000_0002, 0))  # its #GP is final, not "try the next provider"


@given(st.integers(0, (1 << 32) - 1), st.integers(0, (1 << 64) - 1))
def test_chain_never_raises(index: int, value: int) -> None:
    chain = MsrChain([Bound(table(), Ctx())])
    for res in (chain.rdmsr(index), chain.wrmsr(index, value)):
        assert res is None or isinstance(res, int | Fault)


def test_gp_and_ud_values() -> None:
    assert (gp().vector, gp().error_code) == (13, 0)
    assert (ud().vector, ud().error_code) == (6, None)
    assert str(gp("x")) == "#GP(0): x"
