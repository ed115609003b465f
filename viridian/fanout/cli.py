"""The options every fanned-out command shares: ``--workers N`` and ``--cluster ADDRESS``."""

from __future__ import annotations

import argparse
from typing import Any

from viridian.errors import UserError


def add_arguments(p: Any) -> None:
    g = p.add_argument_group("fan-out (needs the [farm] extra)")
    g.add_argument("--workers", type=int, metavar="N",
                   help="run the cells on N local worker processes (a Dask LocalCluster); default: in this process")
    g.add_argument("--cluster", metavar="ADDRESS",
                   help="run the cells on an existing Dask scheduler (tcp://127.0.0.1:PORT, or tls://HOST:PORT)")


def options(args: argparse.Namespace) -> tuple[int | None, str | None]:
    """(workers, cluster) from parsed arguments, checked."""
    workers, cluster = getattr(args, "workers", None), getattr(args, "cluster", None)
    if workers is not None and not 1 <= workers <= 256:
        raise UserError(f"--workers {workers}: choose 1..256")
    if workers is not None and cluster is not None:
        raise UserError("--workers and --cluster exclude each other")
    return workers, cluster
