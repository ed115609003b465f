"""Model-level fuzzing (engine-free): seeded random sequences of everything a hostile guest can do to a
partition -- MSR reads/writes over every synthetic index and its neighbours with any value, hypercalls with any
control word (codes, fast/slow/XMM, 64/32-bit, rep counts up to 4095, variable headers up to 1023 units, VP sets
with 64 banks), GPAs at and beyond the end of RAM and across pages, overlapping input and output, message floods,
interrupts with EOI avoidance, time, resets -- against four oracles:

1. no Python exception leaves the model, and no handler fails into a registry's last-resort path (ERROR log);
2. every answer is a value, #GP, #UD or an HV_STATUS the TLFS defines;
3. a hypercall writes guest memory only in its output page and the hypervisor's own pages (SIM/SIEF, overlays);
4. host memory stays bounded (message queues, recorded machine requests).
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from msr import NOT_MINE, Fault
from msr.apic import APIC_SVR
from viridian.abi.control import HypercallControl
from viridian.abi.dispatch import HypercallOutcome
from viridian.abi.memory import BytesMemory
from viridian.abi.registers import M64, HypercallRegisters
from viridian.clock import VirtualClock
from viridian.config import get_preset
from viridian.devices.apic_bus import ApicBus
from viridian.partition.partition import Partition
from viridian.partition.vp import Overlay
from viridian.tlfs.cpuid import Feature, PartitionPrivilege
from viridian.tlfs.hypercalls import HvCall
from viridian.tlfs.msrs import HvMsr
from viridian.tlfs.status import HvStatus

MEM = 64 << 10
VPS = 4
OS_ID = 0x0001040A00004F7C
PAGE = 4096
EXTRA_PRIVILEGES = int(PartitionPrivilege.ACCESS_VP_REGISTERS | PartitionPrivilege.ENABLE_EXTENDED_HYPERCALLS
                       | PartitionPrivilege.ACCESS_TSC_INVARIANT_CONTROLS)
EXTRA_FEATURES = int(Feature.HYPERCALL_MSR_LOCK | Feature.SINT_POLLING_MODE | Feature.XMM_HYPERCALL_OUTPUT)
SYNTHETIC = sorted(int(m) for m in HvMsr)
MSR_INDICES = sorted({i + d for i in SYNTHETIC for d in (-1, 0, 1)} | set(range(0x40000000, 0x40000120)))
CODES = [int(c) for c in HvCall]
IMPLEMENTED = [0x0002, 0x0003, 0x0008, 0x000B, 0x0013, 0x0014, 0x0015, 0x0050, 0x0051, 0x005C, 0x005D, 0x8001]
STATUSES = {int(s) for s in HvStatus}
MAX_QUEUED = 16 * 16 * VPS  # SINTs x queue depth x VPs: what the bounded queues can hold at most


class CountingServices:
    """MachineServices that only counts requests (bounded memory over millions of operations)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def _n(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def flush_tlb(self, source_vp: int, targets: Iterable[int], gvas: Iterable[int] | None) -> None:
        for _ in targets:
            pass
        self._n("flush")

    def send_ipi(self, source_vp: int, target_vp: int, vector: int) -> None:
        self._n("ipi")

    def yield_vp(self, vp: int, reason: str) -> None:
        self._n("yield")

    def request_reset(self, vp: int) -> None:
        self._n("reset")

    def notify_crash(self, vp: int, params: tuple[int, int, int, int, int], message: bytes | None) -> None:
        self._n("crash")

    def kick(self, vp: int) -> None:
        self._n("kick")

    def enter_idle(self, vp: int) -> None:
        self._n("idle")

    def overlays_changed(self, before: list[Overlay], after: list[Overlay]) -> None:
        pass  # nothing to protect without a machine (not counted: the campaign's counts stay comparable)


@dataclass
class Failure:
    op: int
    kind: str
    detail: str


@dataclass
class CampaignResult:
    seed: int
    preset: str
    operations: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)  # what the hypercalls answered
    failures: list[Failure] = field(default_factory=list)
    failure_count: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"seed": self.seed, "preset": self.preset, "operations": self.operations, "by_kind": self.by_kind,
                "hypercall_answers": dict(sorted(self.statuses.items())),
                "failures": self.failure_count, "first_failures": [dataclasses.asdict(f) for f in self.failures],
                "seconds": round(self.seconds, 2),
                "ops_per_second": round(self.operations / self.seconds) if self.seconds else None}


class HostBugs(logging.Handler):
    """Collects ERROR records of the model's loggers: a registry's last-resort path (a host bug) ran."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) < 100:
            self.records.append(record.getMessage())


def grant_everything(part: Partition) -> None:
    """Offer every CPUID bit the model implements (beyond any preset), surviving the refresh a GUEST_OS_ID
    write triggers."""
    original = part._refresh_offer

    def refresh() -> None:
        original()
        o = part.offer
        part.offer = dataclasses.replace(
            o, privileges=type(o.privileges)(int(o.privileges) | EXTRA_PRIVILEGES),
            privilege_mask=o.privilege_mask | EXTRA_PRIVILEGES,
            features=type(o.features)(int(o.features) | EXTRA_FEATURES), feature_mask=o.feature_mask | EXTRA_FEATURES)
        part.policy = dataclasses.replace(part.policy, xmm_output=True)

    part._refresh_offer = refresh  # type: ignore[method-assign]
    refresh()


class Campaign:
    """One seeded campaign against one partition (reset now and then, as a rebooting guest would)."""

    def __init__(self, seed: int, preset: str = "all") -> None:
        self.rng = random.Random(seed)
        self.result = CampaignResult(seed, preset)
        self.clock = VirtualClock()
        self.bus = ApicBus.create(VPS, self.clock)
        for apic in self.bus:
            apic.write_register(APIC_SVR, 0x1FF)
        self.memory = BytesMemory(MEM)
        self.memory.buffer[:] = self.rng.randbytes(MEM)
        self.services = CountingServices()
        self.part = Partition(get_preset(preset), self.memory, vp_count=VPS, services=self.services,
                              clock=self.clock, apics=list(self.bus), rep_budget=8)
        grant_everything(self.part)
        self.part.vps[0].wrmsr(HvMsr.GUEST_OS_ID, OS_ID)
        self.ops: list[tuple[str, Callable[[], None]]] = [
            ("rdmsr", self._rdmsr), ("wrmsr", self._wrmsr), ("hypercall", self._hypercall),
            ("hypercall", self._hypercall), ("hypercall", self._vpset_call), ("message", self._message),
            ("irq", self._irq), ("run", self._run), ("time", self._time), ("poke", self._poke)]

    # -- generators ----------------------------------------------------------------------------------------
    def _value(self) -> int:
        r = self.rng
        pick = r.randrange(6)
        if pick == 0:
            return r.getrandbits(64)
        if pick == 1:
            return r.choice([0, 1, 2, 0x10, 0x1F, 0x10000, 0x1001, 0x3001, 1 << 63, M64])
        if pick == 2:  # a page GPA with the enable bit: inside RAM, its last page, past it, far away
            return r.choice([r.randrange(MEM // PAGE), MEM // PAGE - 1, MEM // PAGE, 1 << 40 >> 12]) << 12 | 1
        if pick == 3:
            return r.getrandbits(r.choice([8, 16, 32]))
        return r.getrandbits(64) & ~0xFFE | r.getrandbits(1)

    def _gpa(self) -> int:
        r = self.rng
        return r.choice([r.randrange(MEM // 8) * 8, MEM - 8, MEM - 16, MEM, MEM + PAGE, r.randrange(MEM // PAGE) *
                         PAGE + PAGE - 8, r.randrange(MEM // PAGE) * PAGE + PAGE - 4, r.getrandbits(64),
                         r.randrange(MEM)])

    def _control(self) -> int:
        r = self.rng
        code = r.choice(IMPLEMENTED) if r.random() < 0.7 else r.choice([r.choice(CODES), r.getrandbits(16)])
        count = r.choice([0, 0, 1, 2, 3, 12, 255, 4095]) if r.random() < 0.6 else 0
        start = r.choice([0, 0, 0, 1, count - 1 if count else 0, 4095])
        var = r.choice([0, 0, 0, 1, 2, 3, 64, 1023])
        ctl = HypercallControl(code & 0xFFFF, r.random() < 0.5, var & 0x3FF, False, count & 0xFFF,
                               start & 0xFFF).encode()
        if r.random() < 0.1:
            ctl |= r.choice([1 << 27, 1 << 31, 1 << 44, 1 << 60, r.getrandbits(64)])
        return ctl & M64

    # -- operations ----------------------------------------------------------------------------------------
    def _rdmsr(self) -> None:
        vp, index = self.rng.randrange(VPS), self._msr_index()
        res = self.part.vps[vp].rdmsr(index)
        if not (res is NOT_MINE or isinstance(res, Fault) or (isinstance(res, int) and 0 <= res <= M64)):
            self._fail("rdmsr", f"{index:#x} answered {res!r}")
        elif isinstance(res, Fault) and res.vector not in (6, 13):
            self._fail("rdmsr", f"{index:#x} fault vector {res.vector}")

    def _msr_index(self) -> int:
        r = self.rng.random()
        return self.rng.choice(MSR_INDICES) if r < 0.95 else self.rng.getrandbits(32)

    def _wrmsr(self) -> None:
        vp, index, value = self.rng.randrange(VPS), self._msr_index(), self._value()
        if index == HvMsr.RESET and value & 1 and self.rng.random() < 0.9:
            value &= ~1  # resets are their own (rarer) operation
        res = self.part.vps[vp].wrmsr(index, value)
        if not (res is None or res is NOT_MINE or isinstance(res, Fault)):
            self._fail("wrmsr", f"{index:#x}={value:#x} answered {res!r}")
        if index == HvMsr.RESET and value & 1:
            self.part.reset()
            self.part.vps[0].wrmsr(HvMsr.GUEST_OS_ID, OS_ID)

    def _call(self, vp: int, control: int, inp: int, out: int, long_mode: bool, xmm: list[int]) -> None:
        before = bytes(self.memory.buffer)
        if long_mode:
            regs = HypercallRegisters(True, rcx=control, rdx=inp, r8=out, xmm=xmm)
        else:
            regs = HypercallRegisters(False, rdx=control >> 32, rax=control & 0xFFFFFFFF, rbx=inp >> 32,
                                      rcx=inp & 0xFFFFFFFF, rdi=out >> 32, rsi=out & 0xFFFFFFFF, xmm=xmm)
        outcome = self.part.hypercall(vp, regs)
        key = (f"#{outcome.fault.vector}" if outcome.fault is not None else "continued" if outcome.continued
               else outcome.status.name if outcome.status is not None else "none")
        self.result.statuses[key] = self.result.statuses.get(key, 0) + 1
        self._check_outcome(outcome, long_mode, control)
        if bytes(self.memory.buffer) != before:
            self._check_writes(before, out if long_mode else (out >> 32 << 32 | out & 0xFFFFFFFF), control)

    def _hypercall(self) -> None:
        r = self.rng
        inp = self._gpa()
        out = inp if r.random() < 0.1 else self._gpa()  # overlapping input and output
        xmm = [r.getrandbits(128) for _ in range(6)]
        self._call(r.randrange(VPS), self._control(), inp, out, r.random() < 0.8, xmm)

    def _vpset_call(self) -> None:
        """Ex calls with VP sets of up to 64 banks (HV_GENERIC_SET sparse 4K / all)."""
        r = self.rng
        code = r.choice([0x0013, 0x0014, 0x0015])
        banks = r.choice([0, 1, 2, 63, 64])
        mask = (1 << banks) - 1 if r.random() < 0.7 else r.getrandbits(64)
        head = (r.choice([0x30, 0x10, 0xFF, 0]).to_bytes(8, "little") if code == 0x0015 else
                r.getrandbits(64).to_bytes(8, "little") + r.choice([0, 1, 2, 3, 7]).to_bytes(8, "little"))
        body = head + r.choice([0, 1, 2]).to_bytes(8, "little") + mask.to_bytes(8, "little") + b"".join(
            r.getrandbits(64).to_bytes(8, "little") for _ in range(banks))
        gpa = r.randrange((MEM - len(body)) // 8) * 8
        self.memory.write(gpa, body)
        count = r.choice([1, 2, 12]) if code == 0x0014 else 0
        ctl = HypercallControl(code, False, r.choice([banks, banks, 0, 1, 1023]) & 0x3FF, False, count, 0).encode()
        self._call(r.randrange(VPS), ctl, gpa, self._gpa(), True, [0] * 6)

    def _message(self) -> None:
        """PostMessage / SignalEvent floods at every connection id, and SINT programming to receive them."""
        r = self.rng
        vp = r.randrange(VPS)
        if r.random() < 0.3:
            self.part.vps[vp].wrmsr(HvMsr.SINT0 + r.randrange(16), r.choice([0x10, 0x20, 0x30, 0x1_0050,
                                                                               r.getrandbits(64)]))
        gpa = r.randrange(MEM // 8 - 32) * 8
        conn = r.choice([0, 1, 2, 0x10000 | r.randrange(16), r.getrandbits(32)])
        if r.random() < 0.5:
            self.memory.write(gpa, conn.to_bytes(4, "little") + bytes(4) + r.getrandbits(32).to_bytes(4, "little")
                              + r.choice([0, 8, 240, 241, 4096]).to_bytes(4, "little") + r.randbytes(240))
            self._call(vp, 0x005C, gpa, 0, True, [0] * 6)
        else:
            self._call(vp, 0x005D | 1 << 16, conn | r.randrange(64) << 32, 0, True, [0] * 6)

    def _irq(self) -> None:
        vp = self.rng.randrange(VPS)
        apic = self.part.vps[vp].apic
        assert apic is not None
        apic.assert_interrupt(self.rng.randrange(256), self.rng.random() < 0.2)

    def _run(self) -> None:
        index = self.rng.randrange(VPS)
        vp, apic = self.part.vps[index], self.bus[index]
        vp.after_run()
        vp.assist.retire_lazy_eoi()
        vector = apic.pending_vector()
        if vector is not None:
            apic.acknowledge()
            vp.assist.on_inject(vector)
        vp.before_run()
        if self.rng.random() < 0.5 and vp.assist.page_gpa is not None:  # the guest's "btr [assist], 0"
            gpa = vp.assist.page_gpa
            self.memory.write(gpa, bytes([self.memory.read(gpa, 1)[0] & 0xFE]))
        vp.after_run()

    def _time(self) -> None:
        self.clock.advance_tsc(self.rng.choice([1, 1000, 10**6, 10**9, self.rng.getrandbits(40)]))
        for i in range(VPS):
            deadline = self.part.poll(i)
            if deadline is not None and deadline < 0:
                self._fail("time", f"poll deadline {deadline}")
            self.bus[i].poll()

    def _poke(self) -> None:
        gpa = self.rng.randrange(MEM // 8) * 8
        self.memory.write(gpa, self.rng.randbytes(self.rng.randrange(1, 65))[: MEM - gpa])

    # -- oracles -------------------------------------------------------------------------------------------
    def _check_outcome(self, outcome: HypercallOutcome, long_mode: bool, control: int) -> None:
        allowed = {"rax", "rcx", "rdx", "r8", *(f"xmm{i}" for i in range(6))} if long_mode else {"rax", "rdx"}
        what = f"control {control:#x}"
        if not set(outcome.registers) <= allowed:
            self._fail("hypercall", f"{what}: wrote registers {sorted(outcome.registers)}")
        if outcome.fault is not None:
            if outcome.fault.vector not in (6, 13) or outcome.advance_rip:
                self._fail("hypercall", f"{what}: fault {outcome.fault.vector}, advance={outcome.advance_rip}")
        elif outcome.continued:
            if outcome.status is not None or outcome.advance_rip:
                self._fail("hypercall", f"{what}: continuation with a status")
        elif outcome.status is None or int(outcome.status) not in STATUSES:
            self._fail("hypercall", f"{what}: status {outcome.status!r}")

    def _check_writes(self, before: bytes, out: int, control: int) -> None:
        """Only the output page (slow calls), the SIM/SIEF pages and the overlays may change."""
        allowed: list[tuple[int, int]] = []
        if not control >> 16 & 1:
            allowed.append((out & ~(PAGE - 1), out % PAGE + 2 * PAGE))
        for vp in self.part.vps:
            for gpa in (vp.synic.sim_gpa, vp.synic.sief_gpa, vp.assist.page_gpa):
                if gpa is not None:
                    allowed.append((gpa, PAGE))
        for o in self.part.overlays():
            allowed.append((o.gpa, PAGE))
        after = self.memory.buffer
        for page in range(0, MEM, PAGE):
            if before[page : page + PAGE] != after[page : page + PAGE] and not any(
                    a <= page < a + n for a, n in allowed):
                self._fail("hypercall", f"control {control:#x} wrote guest page {page:#x} outside its output")
                return

    def _check_bounds(self) -> None:
        queued = sum(vp.synic.queued for vp in self.part.vps)
        if queued > MAX_QUEUED:
            self._fail("bounds", f"{queued} messages queued")

    def _fail(self, kind: str, detail: str) -> None:
        self.result.failure_count += 1
        if len(self.result.failures) < 20:
            self.result.failures.append(Failure(self.result.operations, kind, detail))

    # -- driver --------------------------------------------------------------------------------------------
    def run(self, operations: int, progress: Callable[[int], None] | None = None) -> CampaignResult:
        bugs = HostBugs()
        loggers = [logging.getLogger("msr"), logging.getLogger("viridian")]
        for lg in loggers:
            lg.addHandler(bugs)
            lg.propagate = False
        t0 = time.perf_counter()
        res = self.result
        try:
            for i in range(operations):
                kind, op = self.ops[self.rng.randrange(len(self.ops))] if self.rng.random() > 0.0005 else \
                    ("reset", self._reset)
                res.by_kind[kind] = res.by_kind.get(kind, 0) + 1
                res.operations += 1
                try:
                    op()
                    self._check_bounds()
                except Exception as exc:  # oracle 1: nothing may escape the model
                    self._fail("exception", f"{kind}: {exc!r}\n{traceback.format_exc(limit=6)}")
                if bugs.records:
                    for rec in bugs.records:
                        self._fail("host-bug-log", f"{kind}: {rec}")
                    bugs.records.clear()
                if progress is not None and i % 10000 == 0:
                    progress(i)
        finally:
            for lg in loggers:
                lg.removeHandler(bugs)
                lg.propagate = True
            res.seconds = time.perf_counter() - t0
        return res

    def _reset(self) -> None:
        self.part.reset()
        self.part.vps[0].wrmsr(HvMsr.GUEST_OS_ID, OS_ID)


def campaign(operations: int, seed: int = 0, presets: tuple[str, ...] = ("all", "recommended", "xen-defaults"),
             progress: Callable[[int], None] | None = None) -> list[CampaignResult]:
    """Split ``operations`` over the presets (each its own partition and seed)."""
    share, extra = divmod(operations, len(presets))
    return [Campaign(seed + i, p).run(share + (i < extra), progress) for i, p in enumerate(presets)
            if share + (i < extra)]
