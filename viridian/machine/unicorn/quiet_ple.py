"""Pause-loop exits that change nothing, counted in C (csrc vn_pause) instead of stopping the engine.

A pause-loop exit (Intel PLE: PAUSEs at most ``ple_gap`` ticks apart for more than ``ple_window`` ticks) is an
exit like any other: EXIT_TICKS of virtual time, the partition clock brought up to the vCPU, counted, and a
yield offered (KVM ``kvm_vcpu_on_spin``, Machine.yield_vp). When the host has a simulated CPU for every vCPU,
no vCPU ever waits for one, so no yield can happen; if in addition nothing can have become deliverable since
the run started, the run loop only counts the exit, polls devices whose deadlines cannot have come (the quantum
ends at the nearest deadline known when it started) and starts the engine again at the next instruction.
vn_pause then does that accounting itself (``ple_quiet``) and the run loop collects the count after the run:
same exits, clocks and interrupts (tests/machine/test_fastpath_equivalence.py), without a Python round trip
per exit -- a 4-vCPU Debian boot makes ~36,000 of them while vCPUs wait for one another.

Conditions, checked right before each run of the engine, until the vCPU's slice (Vcpu.run) handles its first
exit in Python -- that exit may arm a timer whose deadline the host's quantum was not cut to, send an IPI or
unmask an interrupt, so pause-loop exits go through the run loop for the rest of the slice: no --trace, --fast
or --gdb (every exit seen one by one), the first pause-loop exit already on record (negotiation first use and
its time), no interrupt or NMI pending or waiting for a window, no APIC-assist EOI published (the run loop
settles skipped EOIs between runs), and no PC device deadline before the run's end (another vCPU may have
programmed one earlier in this quantum). ``VIRIDIAN_DISABLE=quiet_ple`` turns it off.
"""

from __future__ import annotations

import os
import weakref
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from viridian.machine.unicorn import engine_build
from viridian.machine.unicorn import vcpu_delivery as D

if TYPE_CHECKING:
    from viridian.machine.unicorn.vcpu import Vcpu

MASK64 = (1 << 64) - 1


def allowed(v: Vcpu, limit: int) -> bool:
    """Whether a pause-loop exit in the coming run (to the clock value ``limit``) may be counted natively (see the
    module text); called after the APIC assist published its EOI candidate and the native clock was armed."""
    m = v.m
    host = m.host
    if host is None or host.pcpus < host.vcpu_count or m.tracer is not None or m.fast or m.debugger is not None:
        return False
    # (an NMI waiting for its IRET runs one block at a time: a PAUSE ends its block, so that run stops right
    # after it either way)
    if v.nmi_pending or v.vp.assist.armed is not None or D.has_interrupt(v):
        return False
    if not (m.neg.used("event", "pause-loop") and _enabled(os.environ.get(engine_build.DISABLE_ENV, ""))):
        return False
    # a PC device another vCPU programmed earlier in this quantum may fall due inside this run: its interrupt
    # would be raised at the first pause-loop exit after that (PcPlatform.poll in the run loop)
    d = _platform_deadline(m.platform) if m.platform is not None else None
    return d is None or d > (limit + int(v.native.tsc_base)) & MASK64


_deadlines: weakref.WeakKeyDictionary[Any, tuple[int, int | None]] = weakref.WeakKeyDictionary()


def _platform_deadline(p: Any) -> int | None:
    """PcPlatform.next_deadline(), or an earlier value: it is recomputed after every guest access to the platform
    (PcPlatform.syncs), the only way a deadline moves earlier; between accesses devices only fall due, and an
    advanced device's next deadline is later (a stale, earlier answer only refuses the fast path)."""
    got = _deadlines.get(p)
    if got is None or got[0] != p.syncs or (got[1] is not None and got[1] <= p.now()):  # (due: maybe advanced)
        got = (p.syncs, p.next_deadline())
        _deadlines[p] = got
    return got[1]


@lru_cache(maxsize=4)
def _enabled(_env: str) -> bool:
    return engine_build.enabled("quiet_ple")


def collect(v: Vcpu) -> None:
    """Account the pause-loop exits vn_pause counted as the run loop accounts each one (Vcpu.count_exit,
    Machine.yield_vp: the exit reason and the event); the partition clock follows vn_state.tsc_floor."""
    n = v.native
    k, n.ple_exits = int(n.ple_exits), 0
    v.stats.by_reason["pause"] += k
    v.stats.events["pause-loop"] += k
    v.traps.collect_native_tsc()  # brings the partition clock up to tsc_floor (counts nothing else twice)
