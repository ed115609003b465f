"""The narrow interface through which the model asks the machine for effects it cannot perform itself."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from viridian.partition.vp import Overlay


class MachineServices(Protocol):
    """Implemented by the vCPU machine (and by RecordingServices in tests)."""

    def flush_tlb(self, source_vp: int, targets: Iterable[int], gvas: Iterable[int] | None) -> None:
        """Invalidate the TLBs of ``targets`` (all of it when ``gvas`` is None) before the call returns."""
        ...

    def send_ipi(self, source_vp: int, target_vp: int, vector: int) -> None:
        """Deliver a fixed, edge-triggered interrupt ``vector`` to ``target_vp``'s local APIC."""
        ...

    def yield_vp(self, vp: int, reason: str) -> None:
        """Scheduling hint (NotifyLongSpinWait): let other VPs of the partition run."""
        ...

    def request_reset(self, vp: int) -> None:
        """HV_X64_MSR_RESET: the guest asked for a system reset."""
        ...

    def notify_crash(self, vp: int, params: tuple[int, int, int, int, int], message: bytes | None) -> None:
        """CRASH_CTL notify: the guest reported a bugcheck."""
        ...

    def kick(self, vp: int) -> None:
        """Something became pending for ``vp`` (message, timer, event): wake it if halted/idle."""
        ...

    def enter_idle(self, vp: int) -> None:
        """GUEST_IDLE read: park ``vp`` until any interrupt arrives, even with IF = 0 (TLFS §7.x)."""
        ...

    def overlays_changed(self, before: list[Overlay], after: list[Overlay]) -> None:
        """A write that may move, enable, disable or rewrite overlay pages (HYPERCALL, REFERENCE_TSC,
        GUEST_OS_ID) was handled: ``before``/``after`` are ``Partition.overlays()`` around it. The machine
        write-protects the read-only ones and drops stale translations of code that moved (TLFS §3.13)."""
        ...


@dataclass
class RecordingServices:
    """MachineServices that records every request: the engine-free test double (not a fake: it keeps
    exactly what a machine would have to act on, and tests assert on it)."""

    flushes: list[tuple[int, tuple[int, ...], tuple[int, ...] | None]] = field(default_factory=list)
    ipis: list[tuple[int, int, int]] = field(default_factory=list)
    yields: list[tuple[int, str]] = field(default_factory=list)
    resets: list[int] = field(default_factory=list)
    crashes: list[tuple[int, tuple[int, int, int, int, int], bytes | None]] = field(default_factory=list)
    kicks: list[int] = field(default_factory=list)
    idles: list[int] = field(default_factory=list)
    overlay_changes: list[tuple[list[Overlay], list[Overlay]]] = field(default_factory=list)

    def flush_tlb(self, source_vp: int, targets: Iterable[int], gvas: Iterable[int] | None) -> None:
        self.flushes.append((source_vp, tuple(targets), None if gvas is None else tuple(gvas)))

    def send_ipi(self, source_vp: int, target_vp: int, vector: int) -> None:
        self.ipis.append((source_vp, target_vp, vector))

    def yield_vp(self, vp: int, reason: str) -> None:
        self.yields.append((vp, reason))

    def request_reset(self, vp: int) -> None:
        self.resets.append(vp)

    def notify_crash(self, vp: int, params: tuple[int, int, int, int, int], message: bytes | None) -> None:
        self.crashes.append((vp, params, message))

    def kick(self, vp: int) -> None:
        self.kicks.append(vp)

    def enter_idle(self, vp: int) -> None:
        self.idles.append(vp)

    def overlays_changed(self, before: list[Overlay], after: list[Overlay]) -> None:
        self.overlay_changes.append((before, after))
