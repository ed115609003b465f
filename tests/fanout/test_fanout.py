"""The fan-out layer on real Dask components: a `dask scheduler` and two `dask worker` processes on 127.0.0.1
(ephemeral ports, stopped at the end), a LocalCluster, and the serial executor -- results equal exactly."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from viridian.errors import UserError
from viridian.fanout import Cell, fan_out
from viridian.fanout.executor import DaskExecutor, check_address
from viridian.fanout.plans import SHARD_OPS, conformance_cells, fuzz_cells, shard_seed
from viridian.fanout.tasks import VOLATILE

pytest.importorskip("distributed", reason="the [farm] extra (Dask distributed) is not installed")

DASK = Path(sys.executable).with_name("dask")


def strip(value: Any) -> Any:
    """A result without the fields that name wall time (everything else must be identical)."""
    if isinstance(value, dict):
        return {k: strip(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [strip(v) for v in value]
    return value


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real scheduler and two single-threaded workers without nannies (a killed worker stays dead)."""
    tmp = tmp_path_factory.mktemp("dask")
    sched_file = tmp / "scheduler.json"
    env = dict(os.environ, DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES="1")
    procs = [subprocess.Popen([str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", str(sched_file)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 60
        while not sched_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(sched_file.read_text())["address"]
        for _ in range(2):
            procs.append(subprocess.Popen([str(DASK), "worker", address, "--nthreads", "1", "--no-nanny",
                                           "--no-dashboard", "--host", "127.0.0.1"], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client

        with Client(address, timeout="30s") as c:
            c.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def test_cluster_equals_serial(scheduler: str) -> None:
    cells = conformance_cells(("none", "recommended"), (1, 2)) + fuzz_cells(4000, 7, ("all", "recommended"))
    serial = fan_out(cells)
    remote = fan_out(cells, cluster=scheduler)
    assert all(r.ok for r in serial) and all(r.ok for r in remote), [r.error for r in remote]
    assert [strip(r.value) for r in remote] == [strip(r.value) for r in serial]
    assert [r.value["counts"]["fail"] for r in serial[:4] if r.value] == [0, 0, 0, 0]


def test_killed_worker_costs_one_retried_cell(scheduler: str) -> None:
    """SIGKILL of a worker while it runs a cell: that cell runs again elsewhere, every cell has its result."""
    from distributed import Client

    cells = [Cell("fuzz", {"seed": shard_seed(11, "all", k), "operations": 15_000, "preset": "all"})
             for k in range(6)]  # ~1 s each: the kill lands while both workers run a cell
    ex = DaskExecutor(address=scheduler)
    try:
        with Client(scheduler) as c:
            pids = c.run(os.getpid)
        victim = sorted(pids.values())[0]
        import threading

        def kill_soon() -> None:
            time.sleep(1.0)
            os.kill(victim, signal.SIGKILL)

        threading.Thread(target=kill_soon, daemon=True).start()
        results = ex.map(cells)
    finally:
        ex.close()
    assert _dead(victim)  # it is gone: the other worker ran its cell again
    assert all(r.ok for r in results), [r.error for r in results]
    serial = fan_out(cells)
    assert [strip(r.value) for r in results] == [strip(r.value) for r in serial]


def _dead(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] in ("Z", "X")
    except OSError:
        return True


def test_local_workers_parent_memory_flat() -> None:
    """The parent runs no guest: 8 conformance cells on 2 local worker processes leave its RSS where it was."""
    cells = conformance_cells(("none", "recommended", "all", "xen-3.4"), (1, 2))
    fan_out(cells[:2], workers=2)  # warm: the scheduler's own imports and threads
    before = _rss_mib()
    results = fan_out(cells, workers=2)
    assert all(r.ok for r in results)
    assert _rss_mib() - before < 60


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def test_shards_do_not_depend_on_workers() -> None:
    a = fuzz_cells(3 * SHARD_OPS + 5, 3, ("all", "recommended"))
    assert [(c.kwargs["preset"], c.kwargs["operations"]) for c in a] == [
        ("all", SHARD_OPS), ("all", SHARD_OPS // 2 + 3), ("recommended", SHARD_OPS), ("recommended", SHARD_OPS // 2 + 2)]
    assert len({c.kwargs["seed"] for c in a}) == len(a)
    assert shard_seed(3, "all", 0) == shard_seed(3, "all", 0) != shard_seed(4, "all", 0)


@pytest.mark.parametrize("address", ["tcp://10.0.0.5:8786", "tcp://example.org:8786", "http://127.0.0.1:1",
                                     "tls://10.0.0.5:8786"])
def test_non_loopback_needs_tls(address: str) -> None:
    with pytest.raises(UserError):
        check_address(address)


def test_loopback_tcp_accepted() -> None:
    assert check_address("tcp://127.0.0.1:8786") is None
    assert check_address("tcp://[::1]:8786") is None


def test_watchdog_stops_a_long_cell_and_the_next_runs() -> None:
    """A cell past its wall-time budget ends "interrupted" at an exit boundary (the SIGINT path); the flag is
    cleared, so the next cell runs to its end."""
    from viridian.fanout.tasks import execute

    slow = execute("conformance", {"offer": "all", "vcpus": 4}, timeout=0.05)
    assert slow["status"] == "interrupted"
    assert execute("conformance", {"offer": "none", "vcpus": 1})["status"] == "exit"


def test_unknown_task_is_refused() -> None:
    from viridian.fanout.tasks import execute

    with pytest.raises(ValueError):
        execute("os.system", {"command": "true"})
