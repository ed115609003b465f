"""The fan-out layer's speed (issue 21), measured in one run: a fuzz campaign of OPS operations (its shards are
the cells) serially in this process vs on a LocalCluster of 2 worker processes, in wall time; the per-cell
overhead (cluster start, the round trip of an empty cell); and the serial executor's overhead on a single run
(one conformance run through fan_out vs called directly). Run on an otherwise idle machine: make bench-fanout
(OPS=N to change the campaign; the target asks for >= 60 s of serial work).
"""

from __future__ import annotations

import os
import sys
import time

from viridian.fanout import fan_out
from viridian.fanout.executor import Cell, DaskExecutor
from viridian.fanout.plans import fuzz_cells

OPS = int(os.environ.get("OPS", "1500000"))
PRESETS = ("all", "recommended", "xen-defaults")


def main() -> int:
    cells = fuzz_cells(OPS, 1, PRESETS)
    t0 = time.perf_counter()
    serial = fan_out(cells)
    t_serial = time.perf_counter() - t0
    t0 = time.perf_counter()
    ex = DaskExecutor(workers=2)
    t_start = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        ex.map([Cell("fuzz", {"seed": 0, "operations": 1, "preset": "all"})] * 4)  # warm: imports on the workers
        t0 = time.perf_counter()
        ex.map([Cell("fuzz", {"seed": 0, "operations": 1, "preset": "all"})] * 20)
        per_cell = (time.perf_counter() - t0) / 20 * 2  # 2 workers: each cell's round trip
        t0 = time.perf_counter()
        farm = ex.map(cells)
        t_farm = time.perf_counter() - t0
    finally:
        ex.close()
    same = [r.value and {k: v for k, v in r.value.items() if k not in ("seconds", "ops_per_second")}
            for r in serial] == [r.value and {k: v for k, v in r.value.items() if k not in ("seconds", "ops_per_second")}
                                 for r in farm]
    print(f"fuzz {OPS:,} operations in {len(cells)} shards: serial {t_serial:6.1f} s, --workers 2 {t_farm:6.1f} s "
          f"(+ {t_start:.1f} s cluster start) -> {t_serial / t_farm:4.2f}x in wall time "
          f"({t_serial / (t_farm + t_start):4.2f}x with the start; target >= 1.6x); results identical: {same}")
    print(f"per-cell overhead on 2 workers: {per_cell * 1000:6.1f} ms (an empty cell's round trip)")
    from viridian.config.presets import load_config
    from viridian.conformance.runner import run_suite, suite_image

    image = suite_image()
    direct = min(_timed(lambda: run_suite(load_config(preset="recommended"), "recommended", image, 2))
                 for _ in range(3))
    layered = min(_timed(lambda: fan_out([Cell("conformance", {"offer": "recommended", "vcpus": 2})]))
                  for _ in range(3))
    print(f"serial executor on one conformance run: {layered:6.3f} s vs {direct:6.3f} s called directly -> "
          f"{(layered / direct - 1) * 100:+5.1f} % (target <= 2 %)")
    return 0


def _timed(fn: object) -> float:
    t0 = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t0


if __name__ == "__main__":
    sys.exit(main())
