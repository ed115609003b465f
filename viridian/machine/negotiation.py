"""What a guest asked the hypervisor for, as it happened (engine-free): the first use of every CPUID leaf,
MSR, hypercall and APIC register with vCPU and virtual time, and what the guest got back.

The machine calls the ``record_*`` methods on its exit paths (one dict lookup when nothing is new); the
analysis that turns this into the negotiation report is :mod:`viridian.report.negotiation`. Memory is
bounded: at most :data:`MAX_DISTINCT` distinct keys are kept, the rest only counted in ``dropped``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from viridian.state import Fields, StateError, check_int

MAX_DISTINCT = 4096
STIMER_CONFIGS = frozenset({0x400000B0, 0x400000B2, 0x400000B4, 0x400000B6})
STIMER_DIRECT = 1 << 12  # HV_X64_MSR_STIMER_CONFIG DirectMode (TLFS §12.x)
GUEST_OS_ID = 0x40000000
KINDS = ("cpuid", "rdmsr", "wrmsr", "hypercall", "mmio", "event")


@dataclass
class FirstUse:
    """When and where a key was first seen, and by whom."""

    vcpu: int
    tsc: int
    result: str = "ok"  # what the first use got: ok, #GP, an HV_STATUS name


@dataclass
class NegotiationLog:
    """First uses and outcomes, keyed by ``(kind, id)``; kind is cpuid, rdmsr, wrmsr, hypercall, mmio or event."""

    first: dict[tuple[str, int | str], FirstUse] = field(default_factory=dict)
    outcomes: Counter[tuple[str, int | str, str]] = field(default_factory=Counter)  # faults and statuses
    os_ids: list[tuple[int, int, int]] = field(default_factory=list)  # (vcpu, tsc, value) per distinct write
    stimer_direct: bool = False
    dropped: int = 0

    def _first(self, key: tuple[str, int | str], vcpu: int, tsc: int, result: str = "ok") -> None:
        if key not in self.first:
            if len(self.first) >= MAX_DISTINCT:
                self.dropped += 1
                return
            self.first[key] = FirstUse(vcpu, tsc, result)

    def _outcome(self, key: tuple[str, int | str, str]) -> None:
        if key in self.outcomes or len(self.outcomes) < MAX_DISTINCT:
            self.outcomes[key] += 1
        else:
            self.dropped += 1

    def record_cpuid(self, vcpu: int, tsc: int, leaf: int) -> None:
        if ("cpuid", leaf) not in self.first:
            self._first(("cpuid", leaf), vcpu, tsc)

    def record_msr(self, vcpu: int, tsc: int, index: int, write: bool, value: int, fault: int | None) -> None:
        kind = "wrmsr" if write else "rdmsr"
        got = "ok" if fault is None else f"#{'GP' if fault == 13 else fault}"
        if (kind, index) not in self.first:
            self._first((kind, index), vcpu, tsc, got)
        if fault is not None:
            self._outcome((kind, index, got))
        elif write:
            if index == GUEST_OS_ID and (not self.os_ids or self.os_ids[-1][2] != value) \
                    and len(self.os_ids) < 64:
                self.os_ids.append((vcpu, tsc, value))
            elif index in STIMER_CONFIGS and value & STIMER_DIRECT:
                self.stimer_direct = True

    def record_hypercall(self, vcpu: int, tsc: int, code: int, result: str, count: int = 1) -> bool:
        """``result``: the HV_STATUS name or ``#UD``. Returns True on the first call of ``code``."""
        new = ("hypercall", code) not in self.first
        if new:
            self._first(("hypercall", code), vcpu, tsc, result)
        key = ("hypercall", code, result)
        if key in self.outcomes or len(self.outcomes) < MAX_DISTINCT:
            self.outcomes[key] += count
        return new

    def record_mmio(self, vcpu: int, tsc: int, reg: int, write: bool) -> None:
        key = ("mmio", reg | int(write))  # register offsets are 16-aligned: bit 0 says write
        if key not in self.first:
            self._first(key, vcpu, tsc)

    def record_event(self, vcpu: int, tsc: int, name: str) -> None:
        if ("event", name) not in self.first:
            self._first(("event", name), vcpu, tsc, "")

    def used(self, kind: str, ident: int | str) -> bool:
        return (kind, ident) in self.first

    # -- snapshots (viridian.state) ----------------------------------------------------------------------
    def save_state(self) -> dict[str, Any]:
        return {"first": [[k, i, f.vcpu, f.tsc, f.result] for (k, i), f in self.first.items()],
                "outcomes": [[k, i, r, n] for (k, i, r), n in self.outcomes.items()],
                "os_ids": [list(t) for t in self.os_ids], "stimer_direct": self.stimer_direct,
                "dropped": self.dropped}

    def load_state(self, state: dict[str, Any], vcpus: int) -> None:
        """At most MAX_DISTINCT keys of the known kinds, vCPU indices below ``vcpus``, order kept."""
        f = Fields(state, "negotiation")
        first: dict[tuple[str, int | str], FirstUse] = {}
        for n, item in enumerate(f.seq("first", max_len=MAX_DISTINCT)):
            at = f"negotiation.first[{n}]"
            kind, ident = _key(item, 5, at)
            if type(item[4]) is not str or len(item[4]) > 64:
                raise StateError(f"{at}: expected a result name")
            first[(kind, ident)] = FirstUse(check_int(item[2], 0, vcpus - 1, at), check_int(item[3], 0, 1 << 63, at),
                                            item[4])
        outcomes: Counter[tuple[str, int | str, str]] = Counter()
        for n, item in enumerate(f.seq("outcomes", max_len=MAX_DISTINCT)):
            at = f"negotiation.outcomes[{n}]"
            kind, ident = _key(item, 4, at)
            if type(item[2]) is not str or len(item[2]) > 64:
                raise StateError(f"{at}: expected a result name")
            outcomes[(kind, ident, item[2])] = check_int(item[3], 0, 1 << 63, at)
        os_ids = []
        for n, item in enumerate(f.seq("os_ids", max_len=64)):
            at = f"negotiation.os_ids[{n}]"
            if type(item) is not list or len(item) != 3:
                raise StateError(f"{at}: expected [vcpu, tsc, value]")
            os_ids.append((check_int(item[0], 0, vcpus - 1, at), check_int(item[1], 0, 1 << 63, at),
                           check_int(item[2], 0, (1 << 64) - 1, at)))
        self.stimer_direct, self.dropped = f.flag("stimer_direct"), f.uint("dropped", 0, 1 << 63)
        self.first, self.outcomes, self.os_ids = first, outcomes, os_ids

    def to_json(self) -> dict[str, Any]:
        """The raw log (the report's ``timeline`` is the readable form)."""
        return {"first": [{"kind": k, "id": i, "vcpu": f.vcpu, "tsc": f.tsc, "result": f.result}
                          for (k, i), f in self.first.items()],
                "outcomes": [{"kind": k, "id": i, "result": r, "count": n} for (k, i, r), n in self.outcomes.items()],
                "dropped": self.dropped}


def _key(item: Any, length: int, at: str) -> tuple[str, int | str]:
    if type(item) is not list or len(item) != length or item[0] not in KINDS:
        raise StateError(f"{at}: expected [kind, id, ...] with kind one of {', '.join(KINDS)}")
    if item[0] == "event":  # events are named; every other kind is keyed by a number (leaf, MSR, code, offset)
        if type(item[1]) is not str or len(item[1]) > 64:
            raise StateError(f"{at}: expected an event name")
        return item[0], item[1]
    return item[0], check_int(item[1], 0, (1 << 64) - 1, at)
