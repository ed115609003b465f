"""What a fan-out cell can run: a fixed table of task functions, each taking and returning plain data.

A cell names its task by key (``TASKS``); a worker runs only what this table holds, with the cell's keyword
arguments. Every task is deterministic (same arguments, same result) apart from the fields named in
``VOLATILE`` (wall times), which is what lets any executor's output be compared with the serial one's.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import Any

VOLATILE = frozenset({"seconds", "wall_seconds", "ops_per_second", "time", "wall"})
DEFAULT_TIMEOUT = 900.0  # seconds of wall time a cell may take before its watchdog stops it


def conformance_cell(offer: str, vcpus: int, cmdline: str = "", image: str | None = None,
                     mem_mib: int | None = None, cpuid_edits: tuple[str, ...] = ()) -> dict[str, Any]:
    """One conformance run (viridian.conformance.runner.run_suite) under a preset (+ CPUID edits)."""
    from viridian.config.cpuid_edits import parse_edit
    from viridian.config.presets import load_config
    from viridian.conformance.runner import run_suite, suite_image

    config = load_config(preset=offer)
    if cpuid_edits:
        config = config.replace(cpuid_edits=tuple(parse_edit(e) for e in cpuid_edits))
    return run_suite(config, offer, suite_image(image), vcpus, cmdline, mem_mib)


def fuzz_shard(seed: int, operations: int, preset: str) -> dict[str, Any]:
    """One fuzz shard: its own partition and seed (viridian.fuzz.model.Campaign)."""
    from viridian.fuzz.model import Campaign

    return Campaign(seed, preset).run(operations).to_json()


def measure_point(experiment: str, config: str, vcpus: int, params: dict[str, int]) -> dict[str, Any]:
    """One point of a ``viridian measure`` sweep (its run, and the run with n = 0 for differential ones)."""
    from viridian.lab.experiments import EXPERIMENTS
    from viridian.lab.runner import Point, measure

    e = EXPERIMENTS[experiment]
    (c,) = [c for c in e.configs if c.name == config]
    return measure(Point(e, c, vcpus, dict(params)))


def compare_side(image: str, config: str, vcpus: int, mem_mib: int, pcpus: int | None, cmdline: str,
                 linux: bool, initrd: str | None, append: str, max_ticks: int) -> dict[str, Any]:
    """One side of ``viridian compare``: the guest (or a Linux kernel) under one offer, its stats JSON."""
    from viridian.config.spec import parse_config
    from viridian.report.run import stats_json

    offer = parse_config(config)
    if linux:
        from viridian.machine.linux_machine import linux_machine

        m = linux_machine(offer, image, initrd=initrd, append=append, vcpus=vcpus, mem_mib=mem_mib, pcpus=pcpus,
                          max_ticks=max_ticks)
    else:
        from viridian.machine.loader import load_image
        from viridian.machine.machine import Machine

        m = Machine(offer, load_image(image), vcpus=vcpus, mem_mib=mem_mib, pcpus=pcpus, cmdline=cmdline,
                    max_ticks=max_ticks)
    m.run()
    return stats_json(m)


def boot_cell(kernel: str, offer: str, vcpus: int, max_ticks: int) -> dict[str, Any]:
    """One cell of the real-kernel boot matrix (a child process of its own, viridian.lab.boot_matrix)."""
    from dataclasses import asdict

    from viridian.lab.boot_matrix import boot_cell as boot

    return asdict(boot(kernel, offer, vcpus, max_ticks=max_ticks))


def diff_guest(guest: str, vcpus: int, engines: tuple[str, str]) -> dict[str, Any]:
    """One fixture guest on two engine configurations, compared (viridian.lab.diff_engines)."""
    from viridian.lab.diff_engines import guest_cell

    return guest_cell(guest, vcpus, (engines[0], engines[1]))


def diff_linux(kernel: str, vcpus: int, engines: tuple[str, str], max_ticks: int) -> dict[str, Any]:
    """A Linux kernel on two engine configurations, the second replaying the first's event log."""
    from viridian.lab.diff_engines import linux_cell

    return linux_cell(kernel, vcpus, (engines[0], engines[1]), max_ticks)


def identity() -> dict[str, Any]:
    """What a worker must share with the client: viridian's version and the engine build."""
    import viridian

    out: dict[str, Any] = {"viridian": viridian.__version__}
    try:
        from viridian.machine.unicorn.engine_build import engine_identity

        ident = engine_identity()
        out["engine"] = {k: ident[k] for k in ("unicorn", "libunicorn_sha256") if k in ident}
    except Exception as exc:  # an engine that cannot load is itself a difference worth naming
        out["engine"] = {"error": type(exc).__name__}
    return out


TASKS: dict[str, Callable[..., dict[str, Any]]] = {
    "conformance": conformance_cell,
    "fuzz": fuzz_shard,
    "measure": measure_point,
    "compare": compare_side,
    "boot": boot_cell,
    "diff_guest": diff_guest,
    "diff_linux": diff_linux,
}


def execute(task: str, kwargs: dict[str, Any], timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """Run one cell where this is called (the serial executor, or inside a Dask worker) under a watchdog.

    The watchdog first asks the run to stop at its next exit boundary (the same flag SIGINT sets,
    viridian.machine.interrupt), so a guest that runs too long ends "interrupted"; a cell still not back
    ``grace`` seconds later is stuck in host code, and the worker process exits -- Dask cannot cancel a
    running task, and the scheduler then retries the cell once on another worker."""
    fn = TASKS.get(task)
    if fn is None:
        raise ValueError(f"unknown fan-out task {task!r}")
    from viridian.machine import interrupt
    from viridian.machine.lifetime import machines_closed

    done = threading.Event()

    def watchdog() -> None:
        if done.wait(timeout):
            return
        interrupt.state.signum = signal.SIGALRM  # the host loop stops at its next slice end
        if not done.wait(max(10.0, timeout / 10)):
            os._exit(75)  # stuck outside the guest loop: give the cell back to the scheduler

    guard = threading.Thread(target=watchdog, name="viridian-watchdog", daemon=True)
    guard.start()
    try:
        with machines_closed():  # the cell's machines, once it has read their results (a worker runs many)
            return fn(**kwargs)
    finally:
        done.set()
        if interrupt.state.signum == signal.SIGALRM:
            interrupt.state.signum = None


__all__ = ["DEFAULT_TIMEOUT", "TASKS", "VOLATILE", "execute", "identity"]
