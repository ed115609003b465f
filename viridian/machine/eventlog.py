"""The event log (issue 19 item 3): where one run's asynchronous events and slice ends happened, so a second run
-- on another engine, or the same engine with its fast paths off -- can be held to the same points and compared
there. Engine-neutral: it sees a vCPU only through the scheduler's calls (``Machine.run_vcpu``, ``Machine.kick``)
and a register reader.

Each entry is a point in one vCPU's own time -- its clock, i.e. bytes of completed guest instructions plus the
exit ticks (docs/architecture.md "The clock") -- with its RIP:

* ``slice``: a slice of the scheduler ended: (vCPU, host time it started, clock before and after, RIP, the
  registers of :data:`REGISTERS`, the vCPU's exits and interrupts delivered so far).
* ``kick``: something became pending for vCPU ``target`` (an IPI, a timer, NMI/INIT/SIPI: ``Machine.kick``)
  while vCPU ``by`` ran at clock ``ticks`` (``by`` = -1: between slices, e.g. a timer polled by the scheduler);
  ``rip`` is what the engine reports inside the exit hook (named in a report, not compared: engines sync RIP
  at different points inside hooks).

``record`` mode appends entries. ``replay`` mode takes a recorded list: before each slice it checks that the
scheduler picked the recorded vCPU at the recorded host time and gives the engine the recorded slice length as
its budget (an engine that can stop at any block start then stops where the recording did); after each slice
and at every kick it compares. The first entry that differs is the divergence: the vCPU, its clock and RIP,
and which registers or counters differ. The replaying run then stops ("stopped", detail names it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from viridian.machine.machine import Machine

REGISTERS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13",
             "r14", "r15", "rip", "rflags", "cr0", "cr3", "cr4", "cr8")
Entry = tuple[Any, ...]  # ("slice", vcpu, start, before, after, rip, regs, exits, delivered) | ("kick", ...)
SLICE_FIELDS = ("kind", "vcpu", "start", "before", "ticks", "rip", "regs", "exits", "delivered")
KICK_FIELDS = ("kind", "target", "by", "ticks", "rip")
RegisterReader = Callable[[Any], tuple[int, ...]]


def engine_registers(v: Any) -> tuple[int, ...]:
    """The values of :data:`REGISTERS` of vCPU ``v`` (backend.VcpuBackend.read_registers: every engine has it)."""
    return tuple(int(x) for x in v.read_registers(REGISTERS))


@dataclass
class Divergence:
    """The first point where the replaying run differs from the log."""

    index: int  # entry number in the log
    kind: str  # "slice" (state), "stop" (the slice ended at another clock), "kick", "schedule", "missing" (the log
    # goes on, the run ended), "extra" (the run goes on, the log ended)
    vcpu: int
    ticks: int  # the vCPU's clock at the point (the log's)
    rip: int | None
    fields: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # name -> (logged, replayed)

    def describe(self) -> str:
        where = f"vCPU {self.vcpu} at clock {self.ticks}" + (f", RIP {self.rip:#x}" if self.rip is not None else "")
        what = ", ".join(f"{k} {_fmt(a)} != {_fmt(b)}" for k, (a, b) in self.fields.items())
        return f"event {self.index} ({self.kind}) {where}: {what}"

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "kind": self.kind, "vcpu": self.vcpu, "ticks": self.ticks,
                "rip": None if self.rip is None else f"{self.rip:#x}",
                "fields": {k: [_fmt(a), _fmt(b)] for k, (a, b) in self.fields.items()},
                "text": self.describe()}


def _fmt(x: Any) -> str:
    return f"{x:#x}" if isinstance(x, int) and not isinstance(x, bool) and abs(x) > 4096 else str(x)


class EventLog:
    """Record a run's slice ends and kicks, or replay a recorded list against a run (module docstring)."""

    def __init__(self, mode: str = "record", entries: list[Entry] | None = None,
                 read_registers: RegisterReader = engine_registers) -> None:
        if mode not in ("record", "replay"):
            raise ValueError(f"event log mode {mode!r}")
        if mode == "replay" and entries is None:
            raise ValueError("a replay needs the recorded entries")
        self.mode = mode
        self.entries: list[Entry] = [] if entries is None else entries
        self.pos = 0  # replay: the next entry to check
        self.read_registers = read_registers
        self.divergence: Divergence | None = None
        self.machine: Machine | None = None
        self._before = self._start = 0

    def attach(self, m: Machine) -> EventLog:
        """Hook this log into machine ``m`` (its run_vcpu and kick call it)."""
        self.machine = m
        m.eventlog = self
        return self

    # -- the machine's calls ------------------------------------------------------------------------------
    def slice_start(self, v: Any, start: int, budget: int) -> int:
        """vCPU ``v`` gets a slice at host time ``start``: the budget to run it with."""
        self._before, self._start = v.ticks, start
        if self.mode == "record" or self.divergence is not None:
            return budget
        e = self._next_slice()
        if e is None:
            self._diverge("extra", v.index, v.ticks, None, {"event": "none (the recording ended)"},
                          {"event": "slice"})
            return budget
        got = {"vcpu": v.index, "start": start, "before": v.ticks}
        want = {"vcpu": e[1], "start": e[2], "before": e[3]}
        if got != want:
            self._diverge("schedule", e[1], e[3], e[5], want, got)
            return budget
        return max(1, e[4] - e[3])  # the recorded slice length: stop where the recording stopped

    def slice_end(self, v: Any) -> None:
        """vCPU ``v``'s slice ended (after the machine's code-coherence sync)."""
        regs = self.read_registers(v)
        entry = ("slice", v.index, self._start, self._before, v.ticks, regs[REGISTERS.index("rip")],
                 regs, v.stats.total, v.stats.interrupts_delivered)
        if self.mode == "record":
            self.entries.append(entry)
            return
        if self.divergence is not None:
            return
        e = self._expect("slice", v.index, v.ticks, regs[REGISTERS.index("rip")])
        if e is None:
            return
        diff = {k: (a, b) for k, a, b in zip(("ticks", "exits", "delivered"), (e[4], e[7], e[8]),
                                               (entry[4], entry[7], entry[8]), strict=True) if a != b}
        kind = "slice"
        if "ticks" in diff:  # the slice ended elsewhere: registers of two different points say nothing more
            kind, diff["rip"] = "stop", (e[5], entry[5])
        else:
            diff |= {n: (a, b) for n, a, b in zip(REGISTERS, e[6], regs, strict=True) if a != b}
        if diff:
            self._diverge(kind, v.index, e[4], e[5], {k: a for k, (a, _) in diff.items()},
                          {k: b for k, (_, b) in diff.items()})
        self.pos += 1

    def kick(self, target: int, by: Any) -> None:
        """Something became pending for vCPU ``target`` while ``by`` (a vCPU or None) ran."""
        rip = 0 if by is None else self.read_registers(by)[REGISTERS.index("rip")]
        entry = ("kick", target, -1 if by is None else by.index, 0 if by is None else by.ticks, rip)
        if self.mode == "record":
            self.entries.append(entry)
            return
        if self.divergence is not None:
            return
        e = self._expect("kick", entry[2], entry[3], rip)
        if e is None:
            return
        if e[:4] != entry[:4]:  # RIP read inside an exit hook is the engine's (not always synced): not compared
            self._diverge("kick", e[2], e[3], e[4], dict(zip(KICK_FIELDS[1:4], e[1:4], strict=True)),
                          dict(zip(KICK_FIELDS[1:4], entry[1:4], strict=True)))
        self.pos += 1

    def may_poll(self, v: Any) -> bool:
        """``Machine.poll_vcpu`` for the running vCPU ``v`` (the run loop looking for due timers): whether to poll.
        Both modes first bring the partition clock up to ``v``'s time, so a poll sees the time the vCPU is at
        (not the last exit's). In a replay, a poll between the recorded kicks could raise a timer's interrupt at
        another instruction than the recording did (where an engine stops, and which exits it handles in Python,
        differ): the replaying run polls only once ``v`` reached the clock of the next kick it recorded in this
        slice (:meth:`run_slice` stops it there)."""
        m = self.machine
        running = m.running if m is not None else None
        if m is None or running is None or running.index != v.index:
            return True  # between slices: the scheduler's polls are the same on every engine
        m.sync_clock(running)
        if self.mode == "record" or self.divergence is not None:
            return True
        t = self._next_kick(running)
        return t is not None and t <= running.ticks

    def run_slice(self, v: Any, budget: int) -> int:
        """Run ``v``'s slice (``Machine.run_vcpu``). A replay runs it in pieces that end at the clocks of the
        kicks ``v`` recorded in it, so the polls :meth:`may_poll` allows happen where the recording's did. The
        pieces are exact runs (``v.exact``: the engine stops before the block that would pass the piece's end and
        steps single instructions to it; its own deadline clips and kicks do not end a piece), so the replay
        lands on the recorded clock wherever the two engines' blocks start; an instruction that straddles it
        (the recording's point is not an instruction boundary here) lands past it and is named a ``stop``."""
        if self.mode == "record" or self.divergence is not None:
            return int(v.run(budget))
        exact = getattr(v, "exact", None)
        if exact is None:  # an engine without exact runs: its pieces end at block starts
            return self._pieces(v, budget)
        v.exact = True  # each piece ends at exactly its clock (single steps inside the block that holds it)
        try:
            return self._pieces(v, budget)
        finally:
            v.exact = False

    def _pieces(self, v: Any, budget: int) -> int:
        used = 0
        while True:
            t = self._next_kick(v, after=v.ticks)  # kicks at this clock happen as the next run starts
            if t is None or t - v.ticks >= budget - used:
                return used + int(v.run(budget - used))
            used += int(v.run(t - v.ticks))
            m = self.machine
            if used >= budget or v.halted or v.idle or v.yield_pending or (m is not None and m.done):
                return used

    def _next_kick(self, v: Any, after: int = -1) -> int | None:
        """The clock of the next kick ``v`` recorded in the current slice later than ``after`` (None: none)."""
        for j in range(self.pos, len(self.entries)):
            e = self.entries[j]
            if e[0] == "slice":
                return None
            if e[2] == v.index and e[3] > after:
                return int(e[3])
        return None

    def finish(self) -> None:
        """The replaying run ended: entries it never reached are a divergence too."""
        if self.mode == "replay" and self.divergence is None and self.pos < len(self.entries):
            e = self.entries[self.pos]
            vcpu, ticks = (e[1], e[4]) if e[0] == "slice" else (e[2], e[3])
            m = self.machine
            status = m.result.status if m is not None and m.result is not None else "?"
            self.divergence = Divergence(self.pos, "missing", vcpu, ticks, e[5] if e[0] == "slice" else e[4],
                                         {"run": ("went on", f"ended {status}")})

    # -- helpers -----------------------------------------------------------------------------------------
    def _next_slice(self) -> Entry | None:
        """The entry of the slice about to run: the next ``slice`` entry (its kicks come before it)."""
        for j in range(self.pos, len(self.entries)):
            if self.entries[j][0] == "slice":
                return self.entries[j]
        return None

    def _expect(self, kind: str, vcpu: int, ticks: int, rip: int | None) -> Entry | None:
        if self.pos >= len(self.entries):
            self._diverge("extra", vcpu, ticks, rip, {"event": "none (the recording ended)"}, {"event": kind})
            return None
        e = self.entries[self.pos]
        if e[0] != kind:
            logged = {"event": e[0], **dict(zip(SLICE_FIELDS[1:5] if e[0] == "slice" else KICK_FIELDS[1:],
                                                e[1:5], strict=False))}
            self._diverge(kind, vcpu, ticks, rip, logged, {"event": kind})
            return None
        return e

    def _diverge(self, kind: str, vcpu: int, ticks: int, rip: int | None, logged: dict[str, Any],
                 got: dict[str, Any]) -> None:
        keys = list(dict.fromkeys([*logged, *got]))
        self.divergence = Divergence(self.pos, kind, vcpu, ticks, rip,
                                     {k: (logged.get(k), got.get(k)) for k in keys if logged.get(k) != got.get(k)})
        m = self.machine
        if m is not None:
            m.finish("stopped", detail="event log: first divergence: " + self.divergence.describe())


__all__ = ["REGISTERS", "Divergence", "EventLog", "engine_registers"]
