"""Exception/interrupt delivery through a 64-bit IDT (SDM vol. 3 §6.14), engine-free: frames, IST, CPL change,
error codes, and the fault-during-delivery escalation to #GP, #DF and shutdown."""

from __future__ import annotations

import struct

import pytest

from viridian.machine.boot import build_page_tables
from viridian.machine.delivery import CpuView, TripleFault, deliver
from viridian.machine.paging import PageWalker

RAM = 4 << 20
IDT, TSS = 0x10000, 0x11000
HANDLER = 0x200000


def gate(vector: int, ram: memoryview, *, ist: int = 0, kind: int = 0xE, present: bool = True,
         selector: int = 0x08, target: int | None = None) -> None:
    off = target if target is not None else HANDLER + vector * 0x10
    lo = (off & 0xFFFF) | selector << 16 | ist << 32 | kind << 40 | int(present) << 47 | (off >> 16 & 0xFFFF) << 48
    struct.pack_into("<QQ", ram, IDT + 16 * vector, lo, off >> 32)


@pytest.fixture
def ram() -> memoryview:
    mem = memoryview(bytearray(RAM))
    build_page_tables(mem, RAM)
    struct.pack_into("<Q", mem, TSS + 4, 0x300000)  # RSP0
    struct.pack_into("<Q", mem, TSS + 0x24, 0x380000)  # IST1
    return mem


def cpu(cs: int = 0x08, rsp: int = 0x100008, rflags: int = 0x202, limit: int = 0xFFF) -> CpuView:
    return CpuView(rip=0x101000, rsp=rsp, rflags=rflags, cs=cs, ss=0x10 if cs & 3 == 0 else 0x23, cr0=0x80010033,
                   cr3=0x1000, idt_base=IDT, idt_limit=limit, tss_base=TSS)


def frame(ram: memoryview, rsp: int, n: int) -> tuple[int, ...]:
    return struct.unpack_from(f"<{n}Q", ram, rsp)


@pytest.mark.parametrize(("vector", "error"), [(13, 0x10), (14, 2), (0x40, None), (3, None), (8, 0)])
def test_frame_same_cpl(ram: memoryview, vector: int, error: int | None) -> None:
    gate(vector, ram)
    c = cpu()
    d = deliver(PageWalker(ram, RAM), c, vector, error, 0x101000)
    n = 6 if error is not None else 5
    assert d.rip == HANDLER + vector * 0x10 and d.cs == 0x08 and d.ss is None
    assert d.rsp == (c.rsp & ~0xF) - 8 * n
    want = ((error,) if error is not None else ()) + (0x101000, 0x08, 0x202, c.rsp, 0x10)
    assert frame(ram, d.rsp, n) == want
    assert not d.rflags & 0x200  # interrupt gate clears IF


def test_trap_gate_keeps_if(ram: memoryview) -> None:
    gate(0x41, ram, kind=0xF)
    d = deliver(PageWalker(ram, RAM), cpu(), 0x41, None, 0x101000)
    assert d.rflags & 0x200


def test_ist_stack(ram: memoryview) -> None:
    gate(2, ram, ist=1)
    d = deliver(PageWalker(ram, RAM), cpu(), 2, None, 0x101000)
    assert d.rsp == 0x380000 - 5 * 8


def test_cpl3_to_cpl0_uses_rsp0_and_null_ss(ram: memoryview) -> None:
    gate(13, ram)
    c = cpu(cs=0x1B, rsp=0x150000)
    d = deliver(PageWalker(ram, RAM), c, 13, 0, 0x101000)
    assert d.rsp == 0x300000 - 6 * 8 and d.ss == 0 and d.cs == 0x08
    assert frame(ram, d.rsp, 6) == (0, 0x101000, 0x1B, 0x202, 0x150000, 0x23)


def test_not_present_gate_is_gp_with_idt_error_code(ram: memoryview) -> None:
    gate(13, ram)
    gate(0x50, ram, present=False)
    d = deliver(PageWalker(ram, RAM), cpu(), 0x50, None, 0x101000)
    assert d.rip == HANDLER + 13 * 0x10
    assert frame(ram, d.rsp, 1) == (0x50 * 8 + 2,)


def test_fault_delivering_a_contributory_fault_is_double_fault(ram: memoryview) -> None:
    gate(8, ram)  # #GP gate missing: delivering #GP faults -> #DF
    d = deliver(PageWalker(ram, RAM), cpu(), 13, 0, 0x101000)
    assert d.rip == HANDLER + 8 * 0x10 and frame(ram, d.rsp, 1) == (0,)


def test_idt_limit_and_double_fault_failure_is_shutdown(ram: memoryview) -> None:
    with pytest.raises(TripleFault):
        deliver(PageWalker(ram, RAM), cpu(limit=0), 14, 0, 0x101000)


def test_unmapped_stack_escalates(ram: memoryview) -> None:
    gate(0x40, ram)
    gate(14, ram, ist=1)  # the #PF handler has a good stack
    d = deliver(PageWalker(ram, RAM), cpu(rsp=0x7F00_0000_0000), 0x40, None, 0x101000)
    assert d.rip == HANDLER + 14 * 0x10  # an external interrupt whose push faults becomes #PF
