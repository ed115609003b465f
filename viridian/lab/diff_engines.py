"""Differential testing between engines (issue 19 item 3): the same guest on two engine configurations must give
the same guest-visible outcome; ``viridian diff-engines`` and ``make diff-engines`` (docs/diff-engines.md).

An engine configuration is a spec: ``ENGINE[:FASTPATHS]`` -- an engine registered in
viridian/machine/engines.py (``unicorn``, the fast one, also called ``fast``; ``reference`` once registered),
optionally with fast paths forced off for its runs (``unicorn:all`` = ``VIRIDIAN_DISABLE=all``,
viridian/machine/unicorn/engine_build.py). The default pair is ``unicorn`` against ``reference`` when the
reference engine is registered, else against ``unicorn:all`` (:func:`default_pair`).

* Fixture guests (every fixtures/build/*.elf but the Linux user program, conformance.elf among them) run on
  each side and their :func:`observe` records are compared field by field (:data:`COMPARED`); the first
  field that differs is named (:func:`compare`). :data:`NOT_COMPARED` lists what may legitimately differ.
* Each side runs in a process of its own (viridian/lab/diff_side.py: the fast engine's patches are
  process-wide).
* Debian's kernel (:func:`linux_cell`): side A runs with an event log recording every slice end and kick
  (viridian/machine/eventlog.py); side B replays it -- held to A's slice lengths, compared at each entry --
  and the first divergence names the vCPU, its clock, RIP and the registers or counters that differ.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from viridian.errors import UserError

# Guests whose defaults run forever or need a command line, and bounds that keep each run short (the same table
# as tests/machine/test_fastpath_equivalence.py)
CMDLINES = {"hostile_loops.elf": "c", "lab.elf": "exp=eoi n=20 apic=xapic eoi=xapic", "fuzz_ops.elf": "7",
            "linux.elf": "ticks=20", "win7.elf": "ticks=20", "win8.elf": "ticks=20", "win10.elf": "ticks=20",
            "ws2008.elf": "ticks=20"}
MAX_TICKS = {"hostile_loops.elf": 30_000_000, "loop_alu.elf": 400_000_000}
DEFAULT_MAX_TICKS = 4_000_000_000
PC_BOARD = {"hpet.elf", "ioapic.elf", "ioapic_smp.elf", "pc_reset.elf", "pic_pit.elf", "pit_calibrate.elf",
            "pm_timer.elf", "rtc_irq.elf", "uart_irq.elf"}  # guests of the PC platform (--machine pc)
SKIP = {"initramfs"}  # not a fixture guest of the machine (a Linux user program)
VCPUS = (1, 2, 4)
LINUX_VCPUS = (1, 2)
LINUX_APPEND = "console=ttyS0 panic=-1"  # to the root-mount panic (viridian.lab.boot_matrix)
LINUX_MAX_TICKS = 30_000_000_000
ALIASES = {"fast": "unicorn"}

# What is compared, in the order a first difference is looked for (the guest-visible outcome first)
COMPARED = ("result", "serial", "exits.total", "exits.by_reason", "exits.by_msr", "exits.by_hypercall",
            "exits.by_port", "exits.by_exception", "exits.apic_registers", "apic", "per_vcpu", "tlb_flushes",
            "time", "clocks", "pauses")
# What is not, and why (docs/diff-engines.md has the long form)
NOT_COMPARED = {
    "exits.events": "which engine mechanism did the work (tb_patch_failed, engine stop resumed, "
                    "engine_fault_dropped...): engine bookkeeping, not guest-visible",
    "negotiation": "derived from the counters and times compared here (its timeline is first uses)",
    "wall time": "host CPU speed, not virtual time",
}

# Differences between two *different* engines that are known and explained: reported beside the cell ("known"),
# not failing it (docs/diff-engines.md). None at present: the fast engine's native NotifyLongSpinWait (vn_stub)
# now raises the partition clock as the Python path does.
KNOWN: dict[str, str] = {}


@dataclass(frozen=True)
class EngineSpec:
    """An engine and the fast paths forced off for its runs."""

    engine: str
    disable: str = ""  # a VIRIDIAN_DISABLE value

    @property
    def label(self) -> str:
        return self.engine + (f":{self.disable}" if self.disable else "")


def parse_spec(text: str) -> EngineSpec:
    """``ENGINE[:FASTPATH,...|all]`` -> EngineSpec (one line of error for an unknown engine or fast path)."""
    from viridian.machine import engines

    name, _, disable = text.strip().partition(":")
    name = ALIASES.get(name, name)
    if name not in engines.ENGINES:
        raise UserError(f"engine {name!r}: choose {' or '.join(sorted([*engines.ENGINES, *ALIASES]))}")
    if disable:
        if name != "unicorn":
            raise UserError(f"engine {text!r}: only the fast engine (unicorn) has fast paths to force off")
        from viridian.machine.unicorn import engine_build

        with _environment(disable):
            engine_build.disabled()  # checks the names
    return EngineSpec(name, disable)


def available() -> list[str]:
    """The registered engines (viridian/machine/engines.py)."""
    from viridian.machine import engines

    return sorted(engines.ENGINES)


def default_pair() -> tuple[str, str]:
    """Fast against reference when the reference engine is registered; until then the fast engine against
    itself with every fast path forced off (which must agree as well)."""
    return ("unicorn", "reference") if "reference" in available() else ("unicorn", "unicorn:all")


@contextmanager
def _environment(disable: str) -> Iterator[None]:
    from viridian.machine.unicorn.engine_build import DISABLE_ENV

    old = os.environ.get(DISABLE_ENV)
    if disable:
        os.environ[DISABLE_ENV] = disable
    else:
        os.environ.pop(DISABLE_ENV, None)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(DISABLE_ENV, None)
        else:
            os.environ[DISABLE_ENV] = old


def _engine_args(spec: EngineSpec) -> dict[str, Any]:
    """The Machine keyword that selects the engine (none for the default one)."""
    import inspect

    from viridian.machine import engines
    from viridian.machine.machine import Machine

    if spec.engine == engines.DEFAULT:
        return {}
    if "engine" not in inspect.signature(Machine).parameters:
        raise UserError(f"engine {spec.engine!r} is registered, but Machine cannot select an engine yet")
    return {"engine": spec.engine}


# -- fixture guests -------------------------------------------------------------------------------------------
def guest_names() -> list[str]:
    """Every fixture guest image (what tests/machine/test_fastpath_equivalence.py runs)."""
    from viridian.guests import guest_dir

    return sorted(p.name for p in guest_dir().glob("*.elf") if p.stem not in SKIP)


def observe(spec: EngineSpec, guest: str, vcpus: int) -> dict[str, Any]:
    """Run fixture guest ``guest`` on ``vcpus`` vCPUs under ``spec``: what the guest and the stats show."""
    from viridian.config.presets import load_config
    from viridian.guests import guest_path
    from viridian.machine.loader import load_image
    from viridian.machine.machine import Machine
    from viridian.report.run import stats_json

    with _environment(spec.disable), Machine(
            load_config(preset="recommended"), load_image(guest_path(guest)), vcpus=vcpus,
            max_ticks=MAX_TICKS.get(guest, DEFAULT_MAX_TICKS), cmdline=CMDLINES.get(guest, ""),
            board="pc" if guest in PC_BOARD else "minimal", **_engine_args(spec)) as m:
        m.run()
        return outcome(m, stats_json(m))


def outcome(m: Any, s: dict[str, Any]) -> dict[str, Any]:
    """The compared record of a finished machine ``m`` with stats JSON ``s``."""
    exits = {k: v for k, v in s["exits"].items() if k != "events"}
    res = s["result"]
    return {"result": {k: res.get(k) for k in ("status", "code", "vcpu", "detail")},
            "serial": s["serial"], "exits": exits, "apic": s["apic"],
            "per_vcpu": [{"total": p["total"], "by_reason": p["by_reason"]} for p in s["per_vcpu"]],
            "tlb_flushes": s["tlb_flushes"], "time": s["time"], "clocks": [int(v.ticks) for v in m.vcpus],
            "pauses": [int(v.pauses) for v in m.vcpus], "events": s["exits"].get("events", {})}


# -- comparison -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Difference:
    path: str  # e.g. "exits.by_msr.0x40000070.read", "serial"
    a: Any
    b: Any

    def describe(self) -> str:
        return f"{self.path}: {_short(self.a)} != {_short(self.b)}"

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "a": _short(self.a), "b": _short(self.b)}


def _short(x: Any, n: int = 120) -> str:
    text = repr(x) if not isinstance(x, str) else x
    return text if len(text) <= n else text[: n - 3] + "..."


def _get(d: Any, path: str) -> Any:
    for part in path.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def _walk(path: str, a: Any, b: Any) -> Iterator[Difference]:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            yield from _walk(f"{path}.{k}", a.get(k, 0 if k not in a and isinstance(b.get(k), int) else None),
                             b.get(k, 0 if k not in b and isinstance(a.get(k), int) else None))
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            yield from _walk(f"{path}[{i}]", x, y)
    elif a != b:
        yield Difference(path, a, b)


def _serial_difference(a: str, b: str) -> Difference:
    """The first serial line that differs (its number) rather than two whole logs."""
    la, lb = a.splitlines(), b.splitlines()
    for i, (x, y) in enumerate(zip(la, lb, strict=False)):
        if x != y:
            return Difference(f"serial line {i + 1}", x, y)
    i = min(len(la), len(lb))
    return Difference(f"serial line {i + 1}", la[i] if i < len(la) else "<end>", lb[i] if i < len(lb) else "<end>")


def compare(a: dict[str, Any], b: dict[str, Any]) -> list[Difference]:
    """Every difference between two :func:`outcome` records, first the most guest-visible (:data:`COMPARED`)."""
    out: list[Difference] = []
    for path in COMPARED:
        x, y = _get(a, path), _get(b, path)
        if x == y:
            continue
        if path == "serial" and isinstance(x, str) and isinstance(y, str):
            out.append(_serial_difference(x, y))
        else:
            out.extend(_walk(path, x, y))
    return out


# -- cells (viridian.fanout.tasks: "diff_guest", "diff_linux") ------------------------------------------------
def guest_cell(guest: str, vcpus: int, engines: tuple[str, str]) -> dict[str, Any]:
    """One fixture guest on both engine configurations, each in a process of its own (diff_side.py), compared."""
    from viridian.lab.diff_side import side

    specs = [parse_spec(e) for e in engines]
    sides, seconds = [], []
    for spec in specs:
        t0 = time.perf_counter()
        sides.append(side({"kind": "guest", "engine": spec.label, "guest": guest, "vcpus": vcpus})["outcome"])
        seconds.append(round(time.perf_counter() - t0, 2))
    real, known = split_known(specs, sides, compare(sides[0], sides[1]))
    cell = _cell(f"{guest}", vcpus, specs, sides, seconds, real, None)
    cell["known"] = known
    return cell


def split_known(specs: list[EngineSpec], sides: list[dict[str, Any]],
                diffs: list[Difference]) -> tuple[list[Difference], list[dict[str, Any]]]:
    """(differences that fail the cell, the :data:`KNOWN` ones with their reason): known ones only between two
    different engines."""
    known = KNOWN if specs[0].engine != specs[1].engine else {}
    return ([d for d in diffs if d.path not in known],
            [d.to_json() | {"why": known[d.path]} for d in diffs if d.path in known])


def linux_cell(kernel: str, vcpus: int, engines: tuple[str, str], max_ticks: int = LINUX_MAX_TICKS,
               append: str = LINUX_APPEND, offer: str = "recommended") -> dict[str, Any]:
    """Debian's kernel: side A records its event log, side B replays it (each in a process of its own); then
    the outcomes are compared."""
    from viridian.lab.diff_side import side, temp_log

    specs = [parse_spec(e) for e in engines]
    answers: list[dict[str, Any]] = []
    seconds: list[float] = []
    log = temp_log()
    try:
        for i, spec in enumerate(specs):
            t0 = time.perf_counter()
            answers.append(side({"kind": "linux", "engine": spec.label, "kernel": str(kernel), "vcpus": vcpus,
                                 "max_ticks": max_ticks, "append": append, "offer": offer, "log": str(log),
                                 "replay": i == 1}))
            seconds.append(round(time.perf_counter() - t0, 2))
    finally:
        log.unlink(missing_ok=True)
    sides = [a["outcome"] for a in answers]
    div = answers[1]["divergence"]
    diffs = [] if div is not None else compare(sides[0], sides[1])
    out = _cell(f"debian:{Path(kernel).name}", vcpus, specs, sides, seconds, diffs, div)
    out["events"] = answers[0]["events"]
    out["replayed"] = answers[1]["pos"]
    return out


def _cell(name: str, vcpus: int, specs: list[EngineSpec], sides: list[dict[str, Any]], seconds: list[float],
          diffs: list[Difference], div: dict[str, Any] | None) -> dict[str, Any]:
    first = div["text"] if div is not None else (diffs[0].describe() if diffs else None)
    return {"guest": name, "vcpus": vcpus, "engines": [s.label for s in specs],
            "status": [s["result"]["status"] for s in sides], "exits": [s["exits"]["total"] for s in sides],
            "tsc": [s["time"]["tsc"] for s in sides], "serial_bytes": [len(s["serial"]) for s in sides],
            "events": 0, "replayed": 0, "known": [],
            "same": not diffs and div is None, "first": first, "divergence": div,
            "differences": [d.to_json() for d in diffs[:50]], "n_differences": len(diffs) + (div is not None),
            "seconds": seconds}


__all__ = ["COMPARED", "KNOWN", "NOT_COMPARED", "Difference", "EngineSpec", "available", "compare", "default_pair",
           "guest_cell", "guest_names", "linux_cell", "observe", "outcome", "parse_spec"]
