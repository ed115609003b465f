"""One fan-out layer: a list of cells (a task name and its plain-data arguments) in, their results out, in the
cells' order, whichever executor ran them.

* ``serial`` -- in this process, one cell after another (the default; what a single run and the tests use).
* ``local`` -- ``--workers N``: a Dask ``LocalCluster`` of N single-threaded worker processes on 127.0.0.1.
* ``cluster`` -- ``--cluster ADDRESS``: an existing Dask scheduler. Dask ships pickles between client, scheduler
  and workers, so a cluster is one trust domain: ``tcp://`` is accepted on loopback only; any other host needs
  ``tls://`` with certificates from Dask's own configuration (``distributed.comm.tls.*``).

``distributed`` is the optional ``[farm]`` extra, imported only by the Dask executors. Workers run one cell at
a time (``nthreads=1``: the engine's compiled helpers keep per-process state); a cell whose worker dies is
retried once (``allowed-failures`` 1), a cell that raises is retried once, and either way the other cells go
on -- a cell that still fails is reported as that cell's error. Workers whose viridian version or engine build
differs from the client's are refused with one line before anything runs.
"""

from __future__ import annotations

import ipaddress
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from viridian.errors import UserError
from viridian.fanout.tasks import DEFAULT_TIMEOUT, execute, identity


@dataclass(frozen=True)
class Cell:
    """One independent, deterministic unit of work."""

    task: str  # a key of viridian.fanout.tasks.TASKS
    kwargs: dict[str, Any] = field(default_factory=dict)
    label: str = ""


@dataclass
class CellResult:
    cell: Cell
    value: dict[str, Any] | None = None
    error: str | None = None  # the cell failed after its retry: why (and the worker's log where known)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


Progress = Callable[[int, int, int], None]  # (done, failed, total)


class SerialExecutor:
    """Every cell in this process, in order."""

    name = "serial"
    workers = 1

    def __init__(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.timeout = timeout

    def map(self, cells: Sequence[Cell], progress: Progress | None = None) -> list[CellResult]:
        out: list[CellResult] = []
        failed = 0
        for cell in cells:
            t0 = time.perf_counter()
            try:
                res = CellResult(cell, execute(cell.task, cell.kwargs, self.timeout))
            except UserError as exc:
                res = CellResult(cell, error=str(exc))
            res.seconds = time.perf_counter() - t0
            failed += not res.ok
            out.append(res)
            if progress is not None:
                progress(len(out), failed, len(cells))
        return out

    def close(self) -> None:
        return None


class DaskExecutor:
    """Cells as Dask futures on a local cluster of worker processes or on an existing scheduler."""

    def __init__(self, *, workers: int | None = None, address: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT, dashboard: bool = False) -> None:
        try:
            import dask
            from distributed import Client, LocalCluster
        except ImportError:
            raise UserError("--workers/--cluster need Dask: pip install 'viridian-tlfs[farm]'") from None
        self.timeout = timeout
        self.cluster: Any = None
        dask.config.set({"distributed.scheduler.allowed-failures": 1,
                         "distributed.worker.daemon": False,  # boot cells start child processes
                         "distributed.admin.tick.limit": "1h"})  # long cells hold the GIL in the engine
        if address is not None:
            security = check_address(address)
            self.name = "cluster"
            self.client = Client(address, security=security, timeout="20s")
        else:
            n = workers or 1
            if not 1 <= n <= 256:
                raise UserError(f"--workers {n}: choose 1..256")
            self.name = "local"
            self.cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                                        dashboard_address="127.0.0.1:0",  # loopback only, printed on request
                                        silence_logs=logging.ERROR)
            self.client = Client(self.cluster)
        if (dashboard or address is not None) and self.client.dashboard_link:  # a cluster: say where to watch
            print(f"Dask dashboard: {self.client.dashboard_link}", file=sys.stderr)
        self._check_workers()

    @property
    def workers(self) -> int:
        return len(self.client.scheduler_info().get("workers", {}))

    def _check_workers(self) -> None:
        mine = identity()
        theirs = self.client.run(identity)
        bad = {addr: ident for addr, ident in theirs.items() if ident != mine}
        if bad:
            addr, ident = next(iter(bad.items()))
            self.close()
            raise UserError(f"worker {addr} runs {ident}, this client {mine}: install the same viridian wheel "
                            "and engine on every worker")

    def map(self, cells: Sequence[Cell], progress: Progress | None = None) -> list[CellResult]:
        from distributed import as_completed

        futures = {self.client.submit(execute, c.task, c.kwargs, self.timeout, pure=False, retries=1,
                                      key=f"viridian-{c.task}-{i}-{id(self)}-{time.monotonic_ns()}"): i
                   for i, c in enumerate(cells)}
        out: list[CellResult | None] = [None] * len(cells)
        t0 = time.perf_counter()
        failed = 0
        for done, fut in enumerate(as_completed(futures), start=1):
            i = futures[fut]
            try:
                res = CellResult(cells[i], fut.result())
            except UserError as exc:
                res = CellResult(cells[i], error=str(exc))
            except Exception as exc:  # KilledWorker after its retry, or the task's own error
                res = CellResult(cells[i], error=f"{type(exc).__name__}: {exc}"[:500] + self._log_tail())
            res.seconds = time.perf_counter() - t0
            out[i] = res
            failed += not res.ok
            if progress is not None:
                progress(done, failed, len(cells))
        return [r for r in out if r is not None]

    def _log_tail(self) -> str:
        try:
            logs = self.client.get_worker_logs(n=5)
        except Exception:  # the logs are a courtesy; the cell's error stands without them
            return ""
        lines = [f"{addr}: {msg}" for addr, entries in logs.items() for _lvl, msg in entries]
        return ("\nworker log:\n" + "\n".join(lines[-10:])) if lines else ""

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def check_address(address: str) -> Any:
    """The Dask Security for ``address``; UserError unless tcp:// on loopback or tls:// with certificates."""
    parts = urlsplit(address)
    host = parts.hostname or ""
    if parts.scheme == "tcp":
        if not _loopback(host):
            raise UserError(f"--cluster {address}: Dask ships pickles, so plain tcp:// is accepted on loopback "
                            "only; use tls:// with certificates (Dask's distributed.comm.tls settings)")
        return None
    if parts.scheme == "tls":
        from distributed.security import Security

        sec = Security(require_encryption=True)
        if not (getattr(sec, "tls_ca_file", None) and getattr(sec, "tls_client_cert", None)):
            raise UserError(f"--cluster {address}: tls:// needs a CA and a client certificate in Dask's "
                            "configuration (distributed.comm.tls.ca-file, .client.cert, .client.key)")
        return sec
    raise UserError(f"--cluster {address}: give tcp://127.0.0.1:PORT or tls://HOST:PORT")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_executor(workers: int | None = None, cluster: str | None = None, *, timeout: float = DEFAULT_TIMEOUT,
                  dashboard: bool = False) -> SerialExecutor | DaskExecutor:
    """The executor the options ask for (``--workers``/``--cluster``; neither: serial, nothing imported)."""
    if workers is not None and cluster is not None:
        raise UserError("--workers and --cluster exclude each other")
    if cluster is not None:
        return DaskExecutor(address=cluster, timeout=timeout, dashboard=dashboard)
    if workers is not None:
        return DaskExecutor(workers=workers, timeout=timeout, dashboard=dashboard)
    return SerialExecutor(timeout)


def fan_out(cells: Sequence[Cell], workers: int | None = None, cluster: str | None = None, *,
            what: str = "cells", timeout: float = DEFAULT_TIMEOUT, quiet: bool = False) -> list[CellResult]:
    """Run ``cells`` on the executor the options name, with one progress bar on stderr (a terminal only)."""
    ex = make_executor(workers, cluster, timeout=timeout)
    try:
        with progress_bar(what, len(cells), enabled=len(cells) > 1 and not quiet) as bar:
            return ex.map(cells, bar)
    finally:
        ex.close()


class progress_bar:
    """A rich progress bar (cells done / failed, ETA) on stderr when stderr is a terminal."""

    def __init__(self, what: str, total: int, enabled: bool = True) -> None:
        self.what, self.total = what, total
        self.enabled = enabled and sys.stderr.isatty()
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> Progress | None:
        if not self.enabled:
            return None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("{task.fields[failed]} failed"), TimeRemainingColumn(),
                                  console=Console(stderr=True), transient=True)
        self._progress.start()
        self._task = self._progress.add_task(self.what, total=self.total, failed=0)
        return self._update

    def _update(self, done: int, failed: int, total: int) -> None:
        self._progress.update(self._task, completed=done, failed=failed)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


__all__ = ["Cell", "CellResult", "DaskExecutor", "SerialExecutor", "check_address", "fan_out", "make_executor"]
