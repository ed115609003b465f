"""How each fanned-out command divides its work into cells (independent of how many workers run them).

* conformance ``--matrix``: one cell per (preset, vCPU count).
* fuzz: each preset's share of the operations in shards of at most ``SHARD_OPS``; shard k of a preset uses a
  seed derived from the campaign seed, the preset and k (``shard_seed``), printed with its results, so any
  shard reproduces alone (``viridian fuzz --presets P --ops N --shard-seed S``). The shard count depends on
  the operations only, never on ``--workers``.
* the boot matrix: one cell per (offer, vCPU count).
"""

from __future__ import annotations

import hashlib
from typing import Any

from viridian.fanout.executor import Cell

SHARD_OPS = 50_000


def shard_seed(seed: int, preset: str, k: int) -> int:
    """The seed of shard ``k`` of ``preset`` in the campaign seeded ``seed`` (63 bits, stable across builds)."""
    digest = hashlib.sha256(f"viridian-fuzz:{seed}:{preset}:{k}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def fuzz_cells(operations: int, seed: int, presets: tuple[str, ...]) -> list[Cell]:
    share, extra = divmod(operations, len(presets))
    cells: list[Cell] = []
    for i, preset in enumerate(presets):
        ops = share + (i < extra)
        k = 0
        while ops > 0:
            n = min(SHARD_OPS, ops)
            cells.append(Cell("fuzz", {"seed": shard_seed(seed, preset, k), "operations": n, "preset": preset},
                              f"{preset} shard {k}"))
            ops -= n
            k += 1
    return cells


def conformance_cells(presets: tuple[str, ...], vcpus: tuple[int, ...], cmdline: str = "",
                      image: str | None = None, mem_mib: int | None = None,
                      cpuid_edits: tuple[str, ...] = ()) -> list[Cell]:
    return [Cell("conformance", {"offer": p, "vcpus": n, "cmdline": cmdline, "image": image, "mem_mib": mem_mib,
                                 "cpuid_edits": cpuid_edits}, f"{p} x{n}") for p in presets for n in vcpus]


def boot_cells(kernel: str, offers: tuple[str, ...], vcpus: tuple[int, ...], max_ticks: int) -> list[Cell]:
    return [Cell("boot", {"kernel": kernel, "offer": o, "vcpus": n, "max_ticks": max_ticks}, f"{o} x{n}")
            for o in offers for n in vcpus]


def merge_fuzz(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over shards (operations, failures, seconds) in the shards' order."""
    return {"operations": sum(r["operations"] for r in results),
            "failures": sum(r["failures"] for r in results),
            "seconds": round(sum(r["seconds"] for r in results), 2),
            "campaigns": results}


__all__ = ["SHARD_OPS", "boot_cells", "conformance_cells", "fuzz_cells", "merge_fuzz", "shard_seed"]
