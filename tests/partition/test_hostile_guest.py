"""A hostile guest against the whole partition: random RDMSR/WRMSR over the synthetic range, random
hypercalls (any control word, convention, GPA and memory contents), interrupt delivery with EOI avoidance,
time passing, polls and resets -- on a partition offering everything.

Guest input never raises out of the model (issue 2 "Bad input"), and none of it may reach the registries'
last-resort handlers either: a handler exception is turned into #GP / INVALID_HYPERCALL_INPUT and logged,
so a log record at ERROR means a host bug that the guest could trigger.
"""

from __future__ import annotations

import logging
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from msr import NOT_MINE, Fault
from msr.apic import APIC_SVR
from viridian.abi.control import HypercallControl
from viridian.abi.dispatch import HypercallOutcome
from viridian.abi.memory import BytesMemory
from viridian.abi.registers import M64, HypercallRegisters
from viridian.clock import VirtualClock
from viridian.config import get_preset
from viridian.devices.apic_bus import ApicBus
from viridian.fuzz.model import HostBugs, grant_everything
from viridian.partition.partition import Partition
from viridian.partition.services import RecordingServices
from viridian.tlfs.hypercalls import HvCall
from viridian.tlfs.msrs import HvMsr

MEM = 64 << 10
OS_ID = 0x0001040A00004F7C  # Windows Server 2022
VPS = 2
CODES = [int(c) for c in HvCall]
IMPLEMENTED = [0x0002, 0x0003, 0x0008, 0x000B, 0x0013, 0x0014, 0x0015, 0x0050, 0x0051, 0x005C, 0x005D, 0x8001]


def _partition(preset: str, seed: int) -> tuple[Partition, ApicBus, BytesMemory]:
    clock = VirtualClock()
    bus = ApicBus.create(VPS, clock)
    for apic in bus:
        apic.write_register(APIC_SVR, 0x1FF)
    memory = BytesMemory(MEM)
    memory.buffer[:] = random.Random(seed).randbytes(MEM)
    part = Partition(get_preset(preset), memory, vp_count=VPS, services=RecordingServices(), clock=clock,
                     apics=list(bus), rep_budget=8)
    grant_everything(part)
    part.vps[0].wrmsr(HvMsr.GUEST_OS_ID, OS_ID)
    return part, bus, memory


MSR_INDEX = st.one_of(st.sampled_from([int(m) for m in HvMsr]), st.integers(0x40000000, 0x4000011F),
                      st.integers(0, 0xFFFFFFFF))
VALUE = st.one_of(st.integers(0, M64), st.sampled_from([0, 1, 0x10, 0x10000, 0x1001, 0x3001, 0xF001, 1 << 63]),
                  st.integers(0, MEM // 4096).map(lambda pfn: pfn << 12 | 1))
REP_CALLS = {0x0003, 0x0014, 0x0050, 0x0051}
VAR_CALLS = {0x0013, 0x0014, 0x0015}


@st.composite
def well_formed_control(draw: st.DrawFn) -> int:
    """A control word the ABI accepts for an implemented call, so the handler itself runs."""
    code = draw(st.sampled_from(IMPLEMENTED))
    count = draw(st.integers(1, 12)) if code in REP_CALLS else 0
    start = draw(st.integers(0, count - 1)) if count else 0
    var = draw(st.integers(0, 3)) if code in VAR_CALLS else 0
    fast = code != 0x005C and draw(st.booleans())
    return HypercallControl(code, fast, var, False, count, start).encode()


CONTROL = st.one_of(
    well_formed_control(), well_formed_control(),
    st.builds(
        lambda code, fast, var, count, start, junk: HypercallControl(code, fast, var, False, count, start).encode()
        | junk,
        st.one_of(st.sampled_from(IMPLEMENTED), st.sampled_from(CODES), st.integers(0, 0xFFFF)),
        st.booleans(), st.sampled_from([0, 0, 0, 1, 2, 64, 1023]), st.sampled_from([0, 1, 2, 3, 9, 20, 4095]),
        st.sampled_from([0, 0, 1, 2, 19]), st.sampled_from([0] * 12 + [1 << 27, 1 << 31, 1 << 44, 1 << 60])))
GPA = st.one_of(st.integers(0, MEM // 8).map(lambda q: q * 8), st.integers(0, M64))
OP = st.one_of(
    st.tuples(st.just("rd"), st.integers(0, VPS - 1), MSR_INDEX),
    st.tuples(st.just("wr"), st.integers(0, VPS - 1), MSR_INDEX, VALUE),
    st.tuples(st.just("call"), st.integers(0, VPS - 1), CONTROL, GPA, GPA, st.booleans(),
              st.lists(st.integers(0, (1 << 128) - 1), min_size=6, max_size=6)),
    st.tuples(st.just("irq"), st.integers(0, VPS - 1), st.integers(0, 255), st.booleans()),
    st.tuples(st.just("run"), st.integers(0, VPS - 1), st.booleans()),
    st.tuples(st.just("time"), st.integers(0, 10**9)),
    st.tuples(st.just("poke"), st.integers(0, MEM // 8 - 1).map(lambda q: q * 8), st.binary(max_size=64)),
    st.tuples(st.just("reset"),),
)


def _check_outcome(outcome: HypercallOutcome, long_mode: bool) -> None:
    allowed = {"rax", "rcx", "rdx", "r8", *(f"xmm{i}" for i in range(6))} if long_mode else {"rax", "rdx"}
    assert set(outcome.registers) <= allowed
    if outcome.fault is not None:
        assert outcome.fault.vector in (6, 13) and not outcome.advance_rip and not outcome.registers
    elif outcome.continued:
        assert outcome.status is None and not outcome.advance_rip
    else:
        assert outcome.status is not None and outcome.advance_rip


def _step(part: Partition, bus: ApicBus, op: tuple) -> None:  # type: ignore[type-arg]
    kind = op[0]
    if kind == "rd":
        res = part.vps[op[1]].rdmsr(op[2])
        assert res is NOT_MINE or isinstance(res, Fault) or 0 <= res <= M64  # type: ignore[operator]
    elif kind == "wr":
        res = part.vps[op[1]].wrmsr(op[2], op[3])
        assert res is None or res is NOT_MINE or isinstance(res, Fault)
    elif kind == "call":
        _, vp, control, p1, p2, long_mode, xmm = op
        if long_mode:
            regs = HypercallRegisters(True, rcx=control, rdx=p1, r8=p2, xmm=list(xmm))
        else:
            regs = HypercallRegisters(False, rdx=control >> 32, rax=control & 0xFFFFFFFF, rbx=p1 >> 32,
                                      rcx=p1 & 0xFFFFFFFF, rdi=p2 >> 32, rsi=p2 & 0xFFFFFFFF, xmm=list(xmm))
        _check_outcome(part.hypercall(vp, regs), long_mode)
    elif kind == "irq":
        _, vp, vector, level = op
        part.vps[vp].apic.assert_interrupt(vector, level)  # type: ignore[union-attr]
    elif kind == "run":
        _, index, guest_skips_eoi = op
        vp, apic = part.vps[index], bus[index]
        vp.after_run()
        vp.assist.retire_lazy_eoi()
        vector = apic.pending_vector()
        if vector is not None:
            apic.acknowledge()
            vp.assist.on_inject(vector)
        vp.before_run()
        if guest_skips_eoi and vp.assist.page_gpa is not None:  # the guest's "btr [assist], 0"
            gpa = vp.assist.page_gpa
            part.memory.write(gpa, bytes([part.memory.read(gpa, 1)[0] & 0xFE]))
        vp.after_run()
    elif kind == "time":
        part.clock.advance_tsc(op[1])
        for i in range(VPS):
            deadline = part.poll(i)
            assert deadline is None or deadline >= 0
            bus[i].poll()
    elif kind == "poke":  # the guest writes RAM (hypercall inputs, SIM slots, assist word, ...)
        part.memory.write(op[1], op[2][: MEM - op[1]])
    elif kind == "reset":
        part.reset()
        part.vps[0].wrmsr(HvMsr.GUEST_OS_ID, OS_ID)  # the rebooted guest reports itself again


def _run(preset: str, seed: int, ops: list[tuple]) -> None:  # type: ignore[type-arg]
    bugs = HostBugs()
    loggers = [logging.getLogger("msr"), logging.getLogger("viridian")]
    for lg in loggers:
        lg.addHandler(bugs)
    try:
        part, bus, _ = _partition(preset, seed)
        for op in ops:
            _step(part, bus, op)
    finally:
        for lg in loggers:
            lg.removeHandler(bugs)
    assert bugs.records == [], bugs.records


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 2**32), st.lists(OP, max_size=40))
def test_everything_offered(seed: int, ops: list[tuple]) -> None:  # type: ignore[type-arg]
    _run("all", seed, ops)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32), st.lists(OP, max_size=25), st.sampled_from(["xen-defaults", "xen-3.4", "none"]))
def test_other_presets(seed: int, ops: list[tuple], preset: str) -> None:  # type: ignore[type-arg]
    _run(preset, seed, ops)
