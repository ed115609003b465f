"""Runs the points of a ``viridian measure`` sweep: each (configuration, vCPUs, parameters) point is one or two
machine runs (with n operations and, for differential experiments, with none); the figures, the model, the
reduction against the baseline and the command that reproduces the run go into one row."""

from __future__ import annotations

import itertools
import shlex
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from viridian.config.spec import offer_cli_args, parse_config
from viridian.errors import UserError
from viridian.lab.experiments import Experiment, LabConfig, Params

MAX_TICKS = 20_000_000_000


@dataclass(frozen=True)
class Point:
    experiment: Experiment
    config: LabConfig
    vcpus: int
    params: Params

    def cmdline(self, **override: int) -> str:
        p = self.params | override
        return f"{self.experiment.guest(p, self.vcpus)} {self.config.guest}".strip()


def lab_image(name: str = "lab") -> Path:
    """The lab guest shipped with viridian (``viridian guests``)."""
    from viridian.guests import guest_path

    return guest_path(name)


def points(e: Experiment, configs: Sequence[str] | None, vcpus: Sequence[int] | None,
           sweeps: dict[str, list[int]]) -> list[Point]:
    names = list(configs) if configs else [c.name for c in e.configs]
    chosen = []
    for n in names:
        try:
            chosen.append(e.config(n))
        except KeyError:
            raise UserError(f"{e.name}: no configuration {n!r}; choose from "
                            f"{', '.join(c.name for c in e.configs)}") from None
    counts = list(vcpus) if vcpus else list(e.vcpus)
    bad = [v for v in counts if not e.min_vcpus <= v <= 256]
    if bad:
        raise UserError(f"{e.name}: --vcpus {bad[0]}: this experiment needs {e.min_vcpus}..256 vCPUs")
    for key in sweeps:
        if key not in e.params:
            raise UserError(f"{e.name}: no parameter {key!r}; it has {', '.join(e.params)}")
    keys = list(sweeps)
    combos = [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*(sweeps[k] for k in keys))] or [{}]
    return [Point(e, c, v, e.params | combo) for combo in combos for v in counts for c in chosen]


def _mem_mib(vcpus: int) -> int:
    return max(128, 16 + vcpus)  # 64 KiB stack per vCPU on top of the image


def run_once(pt: Point, n: int | None = None) -> dict[str, Any]:
    """One run; returns its stats JSON."""
    from viridian.machine.host import Host
    from viridian.machine.loader import load_image
    from viridian.machine.machine import Machine
    from viridian.report.run import stats_json

    e = pt.experiment
    params = pt.params if n is None else pt.params | {"n": n}
    config = parse_config(pt.config.offer)
    image = load_image(lab_image())
    pcpus = e.pcpus(params, pt.vcpus)
    opts: dict[str, Any] = dict(pt.config.machine)
    m = Machine(config, image, vcpus=pt.vcpus, mem_mib=_mem_mib(pt.vcpus), max_ticks=MAX_TICKS,
                cmdline=pt.cmdline(**({} if n is None else {"n": n})), **opts)
    machines = [m]
    if e.background is not None:
        machines.append(Machine(config, image, vcpus=1, max_ticks=MAX_TICKS,
                                cmdline=e.background(pt.config, params), **opts))
    try:
        Host(machines, pcpus, until_first=True).run()
        data = stats_json(m)
        if len(machines) > 1:
            data["partitions"] = [stats_json(o) for o in machines[1:]]
    finally:
        for o in machines:
            o.close()  # nothing kept alive after the run (issue 19 item 5)
    return data


def command(pt: Point, n: int | None = None) -> str:
    """The ``viridian run`` command line that reproduces one run of the point."""
    e = pt.experiment
    params = pt.params if n is None else pt.params | {"n": n}
    args = ["viridian", "run", "lab", "--vcpus", str(pt.vcpus)]  # a shipped guest's name: works from anywhere
    args += offer_cli_args(pt.config.offer)
    for key, value in pt.config.machine:
        args += [f"--{key.replace('_', '-')}", str(value)]
    if _mem_mib(pt.vcpus) != 128:
        args += ["--mem", str(_mem_mib(pt.vcpus))]
    pcpus = e.pcpus(params, pt.vcpus)
    if pcpus is not None:
        args += ["--pcpus", str(pcpus)]
    args += ["--cmdline", pt.cmdline(**({} if n is None else {"n": n}))]
    if e.background is not None:
        args += ["--with", "lab:1", "--with-cmdline", e.background(pt.config, params),
                 "--stop-others"]
    return shlex.join([*args, "--json"])


def measure(pt: Point) -> dict[str, Any]:
    e = pt.experiment
    full = run_once(pt)
    for s in (full,):
        res = s["result"]
        if (res["status"], res["code"]) != ("exit", 0):
            raise UserError(f"{e.name}/{pt.config.name} on {pt.vcpus} vCPU(s) failed: {res['status']} "
                            f"{res['code']} {res['detail']} (reproduce: {command(pt)})")
    zero = run_once(pt, n=0) if e.differential else None
    if zero is not None and (zero["result"]["status"], zero["result"]["code"]) != ("exit", 0):
        raise UserError(f"{e.name}/{pt.config.name} with n=0 failed: {zero['result']} "
                        f"(reproduce: {command(pt, 0)})")
    figures = e.figures(full, zero if zero is not None else _empty(full))
    ops = e.ops(pt.params, pt.vcpus)
    row: dict[str, Any] = {
        "experiment": e.name, "config": pt.config.name, "offer": pt.config.offer, "vcpus": pt.vcpus,
        "params": dict(pt.params), "operations": ops, "figures": figures,
        "per_operation": {k: round(v / ops, 4) if ops else None for k, v in figures.items()},
        "model": e.model(pt.config.name, pt.params, pt.vcpus) if e.model else None,
        "virtual_ms": round(full["time"]["tsc"] * 1000 / full["time"]["tsc_hz"], 3),
        "command": command(pt), "command_zero": command(pt, 0) if e.differential else None,
    }
    if row["model"] is not None:
        row["model_matches"] = all(figures.get(k) == v for k, v in row["model"].items())
    return row


def _empty(s: dict[str, Any]) -> dict[str, Any]:
    """A run with nothing in it: figures of a non-differential experiment are the run's own."""
    return {"exits": {"total": 0, "by_reason": {}, "by_hypercall": {}}, "per_vcpu": [
        {"apic_registers": {"mmio": {}, "msr": {}}, "by_msr": {}, "by_hypercall": {}} for _ in s["per_vcpu"]],
        "apic": dict.fromkeys(s["apic"], 0), "time": {"tsc": 0, "tsc_hz": s["time"]["tsc_hz"]}}


def add_reductions(e: Experiment, rows: list[dict[str, Any]]) -> None:
    """``reduction_pct``: how much lower the primary figure is than the baseline (first configuration) at
    the same vCPUs and parameters."""
    base: dict[tuple[int, str], float] = {}
    first = e.configs[0].name
    for r in rows:
        if r["config"] == first:
            base[(r["vcpus"], repr(sorted(r["params"].items())))] = r["figures"][e.primary]
    for r in rows:
        b = base.get((r["vcpus"], repr(sorted(r["params"].items()))))
        v = r["figures"][e.primary]
        r["baseline"] = first
        r["reduction_pct"] = None if not b else round((b - v) * 100 / b, 1)


def run_sweep(pts: list[Point], progress: Callable[[Point], None] | None = None) -> Iterator[dict[str, Any]]:
    for pt in pts:
        if progress is not None:
            progress(pt)
        yield measure(pt)
