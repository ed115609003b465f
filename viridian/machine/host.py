"""The host: P simulated physical CPUs shared by the vCPUs of one or more partitions, in one deterministic loop.

Every quantum, the runnable vCPUs of all partitions (rotating order) get at most ``pcpus`` CPUs for up to
``quantum`` ticks (a lone vCPU, or the only runnable one of a lone partition: SOLO_QUANTUM), shortened so that
the nearest timer deadline of any partition is not overshot -- a timer armed during a run ends that run at its
deadline (Vcpu.clip_to_deadline; on SMP the vCPU then gets it delivered and runs on in its CPU's quantum); a vCPU
that halts, idles or yields early hands the rest of its CPU's quantum to the next vCPU waiting. With nothing
runnable anywhere, host time jumps to the nearest deadline. A partition whose vCPUs are all halted with no
deadline ends "hung" while the others go on — the 2009 promise that an idle or spinning guest's time goes to
another partition is this loop.
"""

from __future__ import annotations

import signal
import traceback
from typing import TYPE_CHECKING

from viridian.machine import interrupt
from viridian.machine.ready import own_deadline

if TYPE_CHECKING:
    from viridian.machine.backend import VcpuBackend as Vcpu
    from viridian.machine.machine import Machine, RunResult

MIN_SLICE = 64
KICK_QUANTUM = 100_000  # ticks: a quantum that starts with an event pending for a vCPU (Machine.kick); measured
# on win10.elf at 4/16/64 vCPUs: 100k beats 20k, 50k, 150k and no cap (virtual time 3.7/6.4/18.7 M ticks)
SOLO_QUANTUM = 20_000_000  # ticks (10 ms at 2 GHz): the quantum of a host with a single vCPU


class Host:
    def __init__(self, machines: list[Machine], pcpus: int | None = None, *, until_first: bool = False) -> None:
        self.machines = machines
        self.until_first = until_first  # the other partitions are background load: stop them with the first
        self.pcpus = pcpus or sum(m.vcpu_count for m in machines)
        self.T = max((m.T for m in machines), default=0)  # a resumed snapshot continues from its time
        self.rr = 0  # round-robin position (saved in snapshots, so a resumed run schedules the same way)
        for m in machines:
            m.host = self

    @property
    def vcpu_count(self) -> int:
        return sum(m.vcpu_count for m in self.machines)

    def waiting_for_cpu(self, v: Vcpu) -> int:
        """vCPUs (of any partition) other than ``v`` that could use a CPU now (counted by ready.py, O(1))."""
        return sum(m.ready.n_awake - (m.ready.awake[v.index] if v.m is m else 0)
                   for m in self.machines if not m.done)

    def run(self) -> list[RunResult]:
        try:
            with interrupt.guest_running():
                self._schedule()
        except Exception as exc:  # the host must survive its own bugs too
            for m in self.machines:
                m.finish("error", detail=f"host error: {exc!r}", traceback=traceback.format_exc())
        results = [m.result for m in self.machines]
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    def _interrupted(self, live: list[Machine]) -> None:
        """Every live partition ends "interrupted" at its current virtual time (partial stats stay valid)."""
        name = signal.Signals(interrupt.state.signum or signal.SIGINT).name
        for m in live:
            m.finish("interrupted", detail=f"{name} at tick {m.clock.tsc()}")
        first = self.machines[0]
        interrupt.state.tsc, interrupt.state.tsc_hz = first.clock.tsc(), first.clock.tsc_hz

    def _schedule(self) -> None:
        while True:
            if self.until_first and self.machines[0].done:
                for m in self.machines[1:]:
                    m.finish("stopped", detail="the measured partition ended")
            live = [m for m in self.machines if not m.done]
            for m in live:
                if m.max_ticks <= self.T:
                    m.finish("timeout", detail=f"virtual time budget of {m.max_ticks} ticks used up")
                elif m.stop_at is not None and m.stop_at <= self.T:  # --snapshot-at: every vCPU reached it
                    m.finish("snapshot", detail=f"stopped at tick {self.T} for a snapshot")
            live = [m for m in live if not m.done]
            if not live:
                return
            if interrupt.state.signum is not None:  # SIGINT/SIGTERM: stop at this exit boundary (interrupt.py)
                self._interrupted(live)
                return
            runnable: list[tuple[Machine, Vcpu]] = []
            deadline: int | None = None
            for m in live:
                ready, d = m.ready.scan()  # = [v for v in m.vcpus if v.wants_to_run()], m.next_deadline()
                mine = [(m, v) for v in ready]
                if not mine and d is None:
                    m.finish("hung", detail="every vCPU is halted and nothing can wake one")
                    continue
                runnable += mine
                if d is not None and (deadline is None or d < deadline):
                    deadline = d
            if not runnable:
                if deadline is None:
                    continue  # every live partition just ended hung
                stop = min((m.stop_at for m in live if m.stop_at is not None and m.stop_at > self.T),
                           default=deadline)
                deadline = min(deadline, stop)  # every vCPU is halted: the snapshot time is such a boundary
                for m in live:
                    m.skip_to(deadline)
                self.T = max(self.T, deadline)
                continue
            q = min(m.quantum for m in live)
            kicked = [mv for mv in runnable if mv[1].event_pending()] if self.vcpu_count > 1 else []
            if kicked:  # KVM kicks an IPI's target onto a CPU: it runs first, and the others only briefly
                q = min(q, KICK_QUANTUM)
            if self.vcpu_count == 1 or self._solo(live, runnable, kicked):
                # nothing to interleave: run to the deadline (timers armed meanwhile clip the run, ready.py)
                q = max(q, min(SOLO_QUANTUM, max(MIN_SLICE, live[0].max_ticks - self.T)))
            if deadline is not None and deadline > self.T:
                q = max(MIN_SLICE, min(q, deadline - self.T))
            slice_min, snap = MIN_SLICE, False
            for m in live:  # --snapshot-at: this quantum ends at the snapshot time (vCPUs stop at a block boundary)
                if m.stop_at is not None and self.T < m.stop_at < self.T + q:
                    q, snap = m.stop_at - self.T, True
                    slice_min = min(MIN_SLICE, q)
            k = self.rr % len(runnable)
            order = runnable[k:] + runnable[:k]
            if kicked:
                order = [mv for mv in order if mv in kicked] + [mv for mv in order if mv not in kicked]
            self.rr += 1
            longest = 0
            for _pcpu in range(min(self.pcpus, len(order))):
                budget = q
                while budget >= slice_min and order:
                    m, v = order.pop(0)
                    if m.done:
                        continue
                    b = budget
                    while True:
                        v.deadline_cut, before = False, budget
                        used = m.run_vcpu(v, self.T, q - budget, b)
                        budget -= used
                        if (interrupt.state.signum is not None or m.done or m.vcpu_count == 1 or used == 0
                                or v.halted or v.idle or v.yield_pending or budget < slice_min):
                            break
                        if not (v.deadline_cut is True or (b < before and used >= b)):
                            break  # ran its budget, or was kicked for another vCPU's sake
                        # SMP: it stopped at a deadline of its own (armed in the run, or the one this loop
                        # cut it at): deliver it there and run on, on the same CPU, to its next deadline
                        b = _deliver_due(m, v, self.T + q - budget, budget)
                        if b == 0:
                            break
                    if interrupt.state.signum is not None:
                        break
                    if used == 0 or not (v.halted or v.idle or v.yield_pending):
                        break
                longest = max(longest, q - budget)
                if interrupt.state.signum is not None:
                    break
            # a quantum lasts as long as its busiest simulated CPU ran (all halted or yielding: shorter)
            # (a snapshot quantum ends where its busiest vCPU stopped: the first boundary past T, kept exactly)
            end = self.T + max(slice_min, longest if snap else min(q, longest))
            for m in live:
                end = max(end, m.end_quantum(end))
            self.T = end

    def _solo(self, live: list[Machine], runnable: list[tuple[Machine, Vcpu]], kicked: list[tuple[Machine, Vcpu]]) -> bool:
        """One partition with one runnable vCPU and no event pending for it: nothing to interleave, so it runs
        to the next deadline as a single vCPU does. Whatever can make another vCPU runnable ends the run: a
        deadline known now (the quantum's cut), a timer its own exits arm (clip_to_deadline), an IPI, NMI, INIT
        or SIPI it sends and a device interrupt (Machine.kick: end_run_within). A vCPU whose SynIC waits for a
        free message slot is re-evaluated every quantum (ready.py): no solo run while one does."""
        if len(live) != 1 or len(runnable) != 1 or kicked:
            return False
        m, v = runnable[0]
        return not any(m.partition.vps[i].synic.busy() for i in m.ready.hot if i != v.index)


def _deliver_due(m: Machine, v: Vcpu, t: int, budget: int) -> int:
    """``v`` (SMP) stopped at host time ``t`` at a deadline of its own inside its CPU's quantum: deliver what is
    due there as its next run would (the poll belongs to its run: a device interrupt for another vCPU kicks it)
    and return how long it may run on -- to its next own deadline (a periodic timer re-armed itself in the poll),
    at most ``budget``; 0 if the poll kicked another vCPU (the quantum ends, that vCPU runs first: KICK_QUANTUM)."""
    m.clock.set_tsc(max(m.clock.tsc(), t))
    m.running = v
    try:
        m.poll_vcpu(v)
    finally:
        m.running = None
    if v.deadline_cut is None:
        return 0
    d = own_deadline(m, v)
    return budget if d is None or d <= t else min(budget, max(MIN_SLICE, d - t))
