"""Deterministic record / replay of a run (``viridian run --record F`` / ``--replay F``).

A run is a function of its inputs: the configuration, the image bytes, the command line, the machine options
and -- only with ``--fast`` -- the host clock. The record holds all of them (the host clock as the sequence of
wall-clock readings the machine took) plus digests of what the run produced: exits, serial output and the final
state (RAM, every vCPU's registers, the partition's MSR state). A replay feeds the same inputs back, runs
again, and compares the digests; any difference is reported by name.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from viridian.errors import UserError
from viridian.machine import engines
from viridian.machine.record_schema import FORMAT, VERSION, check_record, sha256_file

if TYPE_CHECKING:
    from viridian.machine.machine import Machine

_STATE_REGS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13",
               "r14", "r15", "rip", "rflags", "cr0", "cr3", "cr4", "cs", "ss")


@dataclass
class WallClock:
    """The machine's wall-clock source: recording readings, or replaying them in order."""

    replay: list[int] | None = None
    log: list[int] = field(default_factory=list)
    _next: int = 0

    def read(self, live: int) -> int:
        if self.replay is not None:
            if self._next < len(self.replay):
                live = self.replay[self._next]
            elif self.replay:
                live = self.replay[-1]
            self._next += 1
        self.log.append(live)
        return live


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def outcome(m: Machine, stats: dict[str, Any]) -> dict[str, str]:
    """Digests of what a run produced."""
    h = hashlib.sha256(bytes(m.ram))
    for v in m.vcpus:
        regs = v.read_registers(_STATE_REGS)
        h.update(json.dumps(list(regs)).encode())
    p = m.partition
    h.update(json.dumps([p.guest_os_id, p.hypercall_msr, p.time.reference_tsc_msr, m.clock.tsc()]).encode())
    return {"result": _digest(stats["result"]), "exits": _digest([stats["exits"], stats["per_vcpu"]]),
            "serial": hashlib.sha256(stats["serial"].encode()).hexdigest(), "state": h.hexdigest()}


def write_record(path: str, options: dict[str, Any], images: list[str], m: Machine, stats: dict[str, Any]) -> None:
    data = {"format": FORMAT, "version": VERSION, "options": options,
            "images": [{"path": p, "sha256": sha256_file(p)} for p in images],
            "host_events": {"wall_clock": m.wall.log if m.fast else []},
            "outcome": outcome(m, stats), "engine": engines.identity(m.engine)}
    try:
        Path(path).write_text(json.dumps(data), encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write the record {path}: {exc.strerror}") from None


def read_record(path: str) -> dict[str, Any]:
    """A record, validated as inert data (viridian.machine.record_schema): its run options are an allow-list,
    type- and range-checked; its images are exactly the ones the options name, unchanged."""
    from viridian.inputs import RECORD_MAX, load_json, read_input

    data = load_json(read_input(path, "record", RECORD_MAX), f"record {path}")
    record = check_record(path, data)
    if (note := engines.identity_note(data.get("engine"))) is not None:  # the run must still match (engines.py)
        print(f"viridian: note: {note}", file=sys.stderr)
    return record


def compare(recorded: dict[str, str], now: dict[str, str]) -> list[str]:
    """Names of the digests that differ (empty: bit-identical)."""
    return [k for k in ("result", "exits", "serial", "state") if recorded.get(k) != now.get(k)]
