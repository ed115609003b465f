"""The scheduler's ready set: which vCPUs of one partition want a CPU, and the partition's nearest deadline,
without re-examining every vCPU each quantum (issue 19 item 5).

A vCPU is re-evaluated (``Vcpu.wants_to_run`` and its timers' next deadline, exactly the calls the full scan
made) only when it is *dirty*: it ran a slice, something kicked it (an IPI, NMI, INIT, SIPI, any newly pending
interrupt: ``Machine.kick``), or host time reached its cached wake deadline (held in a heap, stale entries
dropped lazily). A vCPU whose SynIC has a timer message waiting for a free slot or queued messages, and the BSP
while an 8259A can raise ExtINT, are re-evaluated every quantum, as before. Between its evaluations a clean
vCPU's answer cannot change, so the runnable list (vCPU index order) and the deadline are the full scan's.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from viridian.machine.backend import VcpuBackend as Vcpu
    from viridian.machine.machine import Machine


def _polls(v: Vcpu) -> bool:
    """``wants_to_run`` polls this vCPU's timers (and so the platform's): it is halted or idle."""
    return v.sipi_vector is None and not v.wait_sipi and (v.idle or v.halted)


class ReadySet:
    """Cached ``wants_to_run`` answers and wake deadlines of one partition's vCPUs."""

    def __init__(self, m: Machine, n: int) -> None:
        self.m = m
        self.dirty: set[int] = set(range(n))
        self.runnable: set[int] = set()
        self.polls = [False] * n  # state after the last evaluation (what the scan would see next)
        self.n_polls = 0  # how many of ``polls`` are set
        self.seq = [0] * n
        self.heap: list[tuple[int, int, int]] = []  # (wake TSC, vCPU, seq): valid while seq matches
        self.hot: set[int] = set()  # re-evaluated every quantum
        self.awake = [False] * n  # not halted, idle or waiting for a SIPI (as last seen: Host.waiting_for_cpu)
        self.n_awake = 0
        self.key: tuple[int, int] | None = None
        self._todo: list[int] | None = None  # during a scan: indices still to evaluate (a min-heap)
        self._cur = -1

    def note(self, v: Vcpu) -> None:
        """Record whether ``v`` could use a CPU now (its flags change only in its own slice, by INIT or SIPI,
        or in ``wants_to_run``: each of those calls this)."""
        a = not (v.halted or v.idle or v.wait_sipi)
        if a != self.awake[v.index]:
            self.awake[v.index] = a
            self.n_awake += 1 if a else -1

    def mark(self, vp: int) -> None:
        """Something about vCPU ``vp`` changed: evaluate it in this scan if it is still ahead, else the next."""
        vcpus = getattr(self.m, "vcpus", ())  # a kick while the machine is still being built
        if not 0 <= vp < len(vcpus):
            return
        self.note(vcpus[vp])
        if self._todo is not None and vp > self._cur:
            heapq.heappush(self._todo, vp)
        else:
            self.dirty.add(vp)

    def invalidate(self) -> None:
        self.dirty.update(range(len(self.polls)))

    def scan(self) -> tuple[list[Vcpu], int | None]:
        """The runnable vCPUs in index order and the partition's nearest deadline (TSC), as a full scan gives."""
        m = self.m
        key = (m.partition.time.offset, m.clock.tsc_hz)
        if key != self.key:  # reference time <-> TSC conversion changed: every cached deadline is stale
            self.key = key
            self.invalidate()
        now = m.clock.tsc()
        heap, seq = self.heap, self.seq
        while heap and heap[0][0] <= now:
            _, i, s = heapq.heappop(heap)
            if s == seq[i]:
                self.dirty.add(i)
        self.dirty |= self.hot
        vcpus = m.vcpus
        if m.platform is not None:
            # the full scan polled the platform (inside the first halted or idle vCPU's wants_to_run)
            dirty, polls = self.dirty, self.polls
            if self.n_polls > sum(polls[i] for i in dirty) or any(_polls(vcpus[i]) for i in dirty):
                m.platform.poll()
        todo = sorted(self.dirty)
        self.dirty = set()
        self._todo, self._cur = todo, -1
        try:
            while todo:
                i = heapq.heappop(todo)
                if i == self._cur:
                    continue
                self._cur = i
                self._evaluate(vcpus[i])
        finally:
            self._todo = None
        if len(heap) > 4 * len(vcpus) + 64:  # drop stale entries
            self.heap = heap = [e for e in heap if e[2] == seq[e[1]]]
            heapq.heapify(heap)
        while heap and heap[0][2] != seq[heap[0][1]]:
            heapq.heappop(heap)
        best = heap[0][0] if heap else None
        if m.platform is not None and (d := m.platform.next_deadline()) is not None:
            best = d if best is None else min(best, d)
        return [vcpus[i] for i in sorted(self.runnable)], best

    def _evaluate(self, v: Vcpu) -> None:
        i, m = v.index, self.m
        if v.wants_to_run():
            self.runnable.add(i)
        else:
            self.runnable.discard(i)
        d = m.apics[i].next_deadline_tsc()
        ref = m.partition.poll(i)
        if ref is not None:
            t = m.clock.tsc_for_ref_time(ref)
            d = t if d is None else min(d, t)
        p = _polls(v)
        if p != self.polls[i]:
            self.polls[i] = p
            self.n_polls += 1 if p else -1
        self.note(v)
        self.seq[i] += 1
        if d is not None:
            heapq.heappush(self.heap, (d, i, self.seq[i]))
        if m.partition.vps[i].synic.busy() or (i == 0 and m.platform is not None):
            self.hot.add(i)
        else:
            self.hot.discard(i)


def own_deadline(m: Machine, v: Vcpu) -> int | None:
    """The nearest deadline (TSC) an exit of running vCPU ``v`` can arm or move: its local APIC timer, its SynIC
    timers (polled: what is due is delivered, as Machine.next_deadline does) and the platform's devices. Another
    vCPU's APIC and SynIC timers are armed only by that vCPU (per-VP MSRs and APIC registers), so on one vCPU this
    is Machine.next_deadline(), and on SMP it is what a run must not overshoot (Vcpu.clip_to_deadline), in O(1)."""
    d = m.apics[v.index].next_deadline_tsc()
    ref = m.partition.poll(v.index)
    if ref is not None:
        t = m.clock.tsc_for_ref_time(ref)
        d = t if d is None else min(d, t)
    if m.platform is not None and (p := m.platform.next_deadline()) is not None:
        d = p if d is None else min(d, p)
    return d
