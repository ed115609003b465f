"""Every hypercall code of the real table x (slow / fast / XMM fast) x (x64 / x86) x (rep start 0 / 1),
offered and not offered, plus unknown codes and CPL 3.

Shapes come from the TLFS input layouts (digest §4), written out here by hand -- not read from the
handlers' declarations, which the first test checks against this table. Guest RAM is filled with 0xA5
before each call: nothing outside the declared output block may change, and only the ABI's registers
may be written (RAX or EDX:EAX; RCX or EDX:EAX on a continuation; RDX/R8/XMM0-5 for fast output).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hc_harness import FILL, IN_GPA, MODE_IDS, MODES, OUT_GPA, Result, World, call, grant, make

from viridian.abi.registers import M32, HypercallRegisters
from viridian.partition import hypercalls
from viridian.tlfs.cpuid import Feature, PartitionPrivilege
from viridian.tlfs.hypercalls import HvCall
from viridian.tlfs.status import HvStatus

OK = HvStatus.SUCCESS
BAD_INPUT = HvStatus.INVALID_HYPERCALL_INPUT
UD = "#UD"


@dataclass(frozen=True)
class Shape:
    """TLFS shape of a call: fixed header bytes, rep element sizes, variable header allowed, fast form."""

    rep: bool
    header: int
    rep_in: int = 0
    rep_out: int = 0
    var: bool = False
    fast: bool = True
    out: int = 0  # fixed output bytes of a simple call


# The calls issue 2 asks for (TLFS digest §4 input layouts); every other code is INVALID_HYPERCALL_CODE.
IMPLEMENTED: dict[int, Shape] = {
    HvCall.FLUSH_VIRTUAL_ADDRESS_SPACE: Shape(False, 24),  # {AddressSpace, Flags, ProcessorMask}
    HvCall.FLUSH_VIRTUAL_ADDRESS_LIST: Shape(True, 24, rep_in=8),  # + GVA ranges
    HvCall.NOTIFY_LONG_SPIN_WAIT: Shape(False, 8),  # RDX = SpinCount
    HvCall.SEND_SYNTHETIC_CLUSTER_IPI: Shape(False, 16),  # {Vector, TargetVtl, rsvd, ProcessorMask}
    HvCall.FLUSH_VIRTUAL_ADDRESS_SPACE_EX: Shape(False, 32, var=True),  # {AS, Flags, Format, ValidBanks}
    HvCall.FLUSH_VIRTUAL_ADDRESS_LIST_EX: Shape(True, 32, rep_in=8, var=True),
    HvCall.SEND_SYNTHETIC_CLUSTER_IPI_EX: Shape(False, 24, var=True),  # {Vector, Vtl, rsvd, Format, Banks}
    HvCall.GET_VP_REGISTERS: Shape(True, 16, rep_in=4, rep_out=16),  # {PartitionId, VpIndex, Vtl, rsvd}
    HvCall.SET_VP_REGISTERS: Shape(True, 16, rep_in=32),  # element {Name, rsvd, Value}
    HvCall.POST_MESSAGE: Shape(False, 256, fast=False),  # memory-based (TLFS: not fast)
    HvCall.SIGNAL_EVENT: Shape(False, 8),  # fast: RDX = ConnectionId | FlagNumber << 32
    HvCall.EXT_QUERY_CAPABILITIES: Shape(False, 0, out=8),  # u64 output (slow); fast -> INVALID_PARAMETER (KVM)
}
# The status of each implemented call on an all-zero input, whenever the ABI lets it reach the handler.
ZERO_INPUT: dict[int, HvStatus] = {
    HvCall.FLUSH_VIRTUAL_ADDRESS_SPACE: OK,  # KVM: ProcessorMask 0 = every VP (WS2012); TLFS: INVALID_PARAMETER
    HvCall.FLUSH_VIRTUAL_ADDRESS_LIST: OK,
    HvCall.NOTIFY_LONG_SPIN_WAIT: OK,  # advisory: always SUCCESS
    HvCall.SEND_SYNTHETIC_CLUSTER_IPI: HvStatus.INVALID_PARAMETER,  # vector 0 < 0x10 (TLFS)
    HvCall.FLUSH_VIRTUAL_ADDRESS_SPACE_EX: OK,  # sparse HV_VP_SET without banks = empty set
    HvCall.FLUSH_VIRTUAL_ADDRESS_LIST_EX: OK,
    HvCall.SEND_SYNTHETIC_CLUSTER_IPI_EX: HvStatus.INVALID_PARAMETER,  # vector 0
    HvCall.GET_VP_REGISTERS: HvStatus.INVALID_PARTITION_ID,  # PartitionId 0 != HV_PARTITION_ID_SELF
    HvCall.SET_VP_REGISTERS: HvStatus.INVALID_PARTITION_ID,
    HvCall.POST_MESSAGE: HvStatus.INVALID_PARAMETER,  # MessageType 0 (checked before the connection)
    HvCall.SIGNAL_EVENT: HvStatus.INVALID_CONNECTION_ID,  # no port behind connection 0
    HvCall.EXT_QUERY_CAPABILITIES: OK,  # slow; the fast form is INVALID_PARAMETER (KVM)
}
UNKNOWN = (0x0000, 0x0005, 0x00FF, 0x7FFF, 0x8000, 0x8007, 0xFFFF)
CODES = sorted({*map(int, HvCall), *UNKNOWN})
COUNT = 2  # reps of a rep call (and of the rep-count abuse of a simple call)
CONVS = ("slow", "fast")
EVERYTHING = PartitionPrivilege.ACCESS_VP_REGISTERS | PartitionPrivilege.ENABLE_EXTENDED_HYPERCALLS


def _offered() -> World:
    w = make(vp_count=2, mem_kib=64)
    grant(w.partition, privileges=int(EVERYTHING), features=int(Feature.XMM_HYPERCALL_OUTPUT), xmm_output=True)
    return w


@pytest.fixture(scope="module")
def offered() -> World:
    return _offered()


@pytest.fixture(scope="module")
def bare() -> World:
    return make("hv-relaxed", vp_count=2, mem_kib=64)  # Hv#1 and the hypercall MSRs, nothing else


def _issue(w: World, code: int, conv: str, long_mode: bool, start: int, shape: Shape | None) -> Result:
    count = COUNT if (shape is not None and shape.rep) or start else 0
    header = shape.header if shape is not None else 16
    rep_in = shape.rep_in if shape is not None else 0
    out = (shape.rep_out * count + shape.out) if shape is not None else 0
    block = bytes(header + count * rep_in)  # zeros: a valid (empty) input for every implemented call
    return call(w.partition, code, block, conv=conv, long_mode=long_mode, rep_count=count, rep_start=start,
                out_size=out)


def _abi_keys(long_mode: bool, *, continued: bool = False) -> set[str]:
    keys = {"rax"} if long_mode else {"rax", "rdx"}
    if continued and long_mode:
        keys.add("rcx")
    return keys


def _assert_only_result(res: Result, long_mode: bool, status: HvStatus, reps: int = 0) -> None:
    assert res.outcome.fault is None and res.outcome.advance_rip
    assert (res.status, res.reps) == (status, reps)
    assert set(res.outcome.registers) == _abi_keys(long_mode)
    assert res.ram_clean


CELLS = [(code, conv, mode, start) for code in CODES for conv in CONVS for mode in MODES for start in (0, 1)]
IDS = [f"{code:#06x}-{conv}-{MODE_IDS[MODES.index(m)]}-start{s}" for code, conv, m, s in CELLS]
every_cell = pytest.mark.parametrize(("code", "conv", "long_mode", "start"), CELLS, ids=IDS)


def test_declarations_match_the_tlfs_shapes() -> None:
    specs = hypercalls.load_all().specs
    assert set(specs) == set(IMPLEMENTED)
    for code, shape in IMPLEMENTED.items():
        spec = specs[code]
        assert (spec.rep, spec.input_size, spec.rep_input_size, spec.rep_output_size, spec.var_header,
                spec.fast) == (shape.rep, shape.header, shape.rep_in, shape.rep_out, shape.var, shape.fast), hex(code)
        assert spec.gate is not None and spec.cite.startswith("TLFS"), hex(code)


def verdict(shape: Shape, conv: str, long_mode: bool, start: int) -> HvStatus | str | None:
    """What the ABI alone decides (TLFS §3.7; KVM for #UD), or None when the handler is reached."""
    if start and not shape.rep:
        return BAD_INPUT  # simple call with a rep count
    if conv == "fast":
        if not shape.fast:
            return BAD_INPUT
        in_len = shape.header + (COUNT if shape.rep else 0) * shape.rep_in
        out_len = (COUNT if shape.rep else 0) * shape.rep_out  # (ExtQuery's fast form: handler, KVM)
        if in_len > 16 and not long_mode:
            return UD  # XMM registers only in the x64 convention
        if in_len > 112:
            return BAD_INPUT
        if out_len and not long_mode:
            return UD
    return None


@every_cell
def test_offered(offered: World, code: int, conv: str, long_mode: bool, start: int) -> None:
    shape = IMPLEMENTED.get(code)
    res = _issue(offered, code, conv, long_mode, start, shape)
    if shape is None:  # TLFS §3.8 / KVM: any other code
        _assert_only_result(res, long_mode, HvStatus.INVALID_HYPERCALL_CODE)
        return
    expected = verdict(shape, conv, long_mode, start)
    if expected == UD:
        assert res.outcome.fault is not None and res.outcome.fault.vector == 6
        assert not res.outcome.advance_rip and res.outcome.registers == {} and res.ram_clean
        return
    if isinstance(expected, HvStatus):
        _assert_only_result(res, long_mode, expected)
        return
    # The handler ran on an all-zero (empty) input: a TLFS status, and only ABI registers / output bytes.
    outcome = res.outcome
    assert outcome.fault is None and isinstance(outcome.status, HvStatus)
    assert outcome.advance_rip and not outcome.continued
    keys = set(outcome.registers)
    fast_output = {"rdx", "r8", *(f"xmm{i}" for i in range(6))} if conv == "fast" and shape.rep_out else set()
    assert _abi_keys(long_mode) <= keys <= _abi_keys(long_mode) | fast_output
    assert res.ram_clean
    status = ZERO_INPUT[code]
    if code == HvCall.EXT_QUERY_CAPABILITIES and conv == "fast":
        status = HvStatus.INVALID_PARAMETER
    assert res.status == status
    # rep calls: all reps on success, else RepsCompleted = the element that failed (the first one given)
    assert res.reps == ((COUNT if status == OK else start) if shape.rep else 0)


@every_cell
def test_not_offered_is_access_denied(bare: World, code: int, conv: str, long_mode: bool, start: int) -> None:
    # KVM hv_check_hypercall_access (enforce_cpuid): the privilege check precedes every input check.
    shape = IMPLEMENTED.get(code)
    res = _issue(bare, code, conv, long_mode, start, shape)
    status = HvStatus.INVALID_HYPERCALL_CODE if shape is None else HvStatus.ACCESS_DENIED
    _assert_only_result(res, long_mode, status)


@pytest.mark.parametrize("code", CODES, ids=hex)
@pytest.mark.parametrize(("cpl", "protected"), [(3, True), (1, True), (0, False)], ids=["cpl3", "cpl1", "real"])
def test_unprivileged_caller_gets_ud(offered: World, code: int, cpl: int, protected: bool) -> None:
    # TLFS §3.2: CPL > 0 or real mode -> #UD, before anything else; nothing is read or written.
    regs = HypercallRegisters(long_mode=protected, cpl=cpl, protected=protected, rcx=code, rax=code & M32,
                              rdx=IN_GPA, r8=OUT_GPA)
    memory = offered.memory
    memory.buffer[:] = bytes([FILL]) * memory.size
    outcome = offered.partition.hypercall(0, regs)
    assert outcome.fault is not None and outcome.fault.vector == 6
    assert outcome.registers == {} and not outcome.advance_rip
    assert bytes(memory.buffer) == bytes([FILL]) * memory.size


@pytest.mark.parametrize("code", CODES, ids=hex)
def test_reserved_control_bits(offered: World, code: int) -> None:
    # TLFS §3.7: RsvdZ bits 30:27, 47:44, 63:60 -> INVALID_HYPERCALL_INPUT (unknown codes stay code errors).
    shape = IMPLEMENTED.get(code)
    for bit in (27, 30, 44, 47, 60, 63):
        res = call(offered.partition, code, bytes(shape.header if shape else 0), control_extra=1 << bit,
                   rep_count=COUNT if shape is not None and shape.rep else 0)
        expected = HvStatus.INVALID_HYPERCALL_CODE if shape is None else BAD_INPUT
        _assert_only_result(res, True, expected)


@pytest.mark.parametrize("code", sorted(c for c, s in IMPLEMENTED.items() if not s.var), ids=hex)
def test_variable_header_only_where_accepted(offered: World, code: int) -> None:
    shape = IMPLEMENTED[code]
    res = call(offered.partition, code, bytes(shape.header + 8), var_qwords=1,
               rep_count=COUNT if shape.rep else 0)
    _assert_only_result(res, True, BAD_INPUT)


@pytest.mark.parametrize("code", sorted(c for c, s in IMPLEMENTED.items() if s.rep), ids=hex)
@pytest.mark.parametrize(("count", "start"), [(0, 0), (2, 2), (2, 3), (1, 0xFFF)])
def test_rep_count_and_start_rules(offered: World, code: int, count: int, start: int) -> None:
    # TLFS §3.7: a rep call needs RepCount > 0 and RepStartIndex < RepCount.
    shape = IMPLEMENTED[code]
    res = call(offered.partition, code, bytes(shape.header + count * shape.rep_in), rep_count=count,
               rep_start=start, out_size=shape.rep_out * count)
    _assert_only_result(res, True, BAD_INPUT)
