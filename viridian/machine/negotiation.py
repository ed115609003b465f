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

MAX_DISTINCT = 4096
STIMER_CONFIGS = frozenset({0x400000B0, 0x400000B2, 0x400000B4, 0x400000B6})
STIMER_DIRECT = 1 << 12  # HV_X64_MSR_STIMER_CONFIG DirectMode (TLFS §12.x)
GUEST_OS_ID = 0x40000000


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

    def to_json(self) -> dict[str, Any]:
        """The raw log (the report's ``timeline`` is the readable form)."""
        return {"first": [{"kind": k, "id": i, "vcpu": f.vcpu, "tsc": f.tsc, "result": f.result}
                          for (k, i), f in self.first.items()],
                "outcomes": [{"kind": k, "id": i, "result": r, "count": n} for (k, i, r), n in self.outcomes.items()],
                "dropped": self.dropped}
