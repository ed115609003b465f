"""Debian's cloud kernel booted to its root-mount panic: viridian (1 vCPU, recommended) vs QEMU TCG on the same
machine, in the same run, as a ratio (issue 7 "Performance"). Skips with a reason when the kernel cannot be
fetched or qemu-system-x86_64 is missing. Run: make bench-linux
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from viridian.cli.fetch_kernel_cmd import fetch_kernel
from viridian.errors import UserError

PANIC = "VFS: Unable to mount root fs"
REPEAT = 3


def viridian_boot(kernel: Path) -> tuple[float, str]:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "viridian", "boot", str(kernel), "--max-ticks", "8000000000"],
                         capture_output=True, text=True)
    return time.perf_counter() - t0, res.stdout


def qemu_boot(kernel: Path) -> tuple[float, str]:
    qemu = shutil.which("qemu-system-x86_64")
    assert qemu is not None
    t0 = time.perf_counter()
    res = subprocess.run([qemu, "-accel", "tcg", "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1",
                          "-m", "256", "-serial", "stdio", "-display", "none", "-no-reboot"],
                         capture_output=True, text=True, timeout=600)
    return time.perf_counter() - t0, res.stdout


def main() -> int:
    try:
        kernel = fetch_kernel()
    except UserError as exc:
        print(f"bench-linux: skipped: {exc}")
        return 0
    if shutil.which("qemu-system-x86_64") is None:
        print("bench-linux: skipped: qemu-system-x86_64 not installed (apt-get install qemu-system-x86)")
        return 0
    qts, vts = [], []
    for i in range(REPEAT):  # interleaved, best of REPEAT: this host is shared and noisy
        print(f"bench-linux: run {i + 1}/{REPEAT} ...", file=sys.stderr, flush=True)
        qt, qout = qemu_boot(kernel)
        vt, vout = viridian_boot(kernel)
        for name, out in (("qemu", qout), ("viridian", vout)):
            if PANIC not in out:
                print(f"bench-linux: {name} did not reach the root-mount panic")
                return 1
        qts.append(qt)
        vts.append(vt)
    qt, vt = min(qts), min(vts)
    print(f"bench-linux: {kernel.name} to '{PANIC}' (1 vCPU), wall time, best of {REPEAT}")
    print(f"  viridian {vt:6.2f} s (runs {' '.join(f'{x:.2f}' for x in vts)})")
    print(f"  QEMU TCG {qt:6.2f} s (runs {' '.join(f'{x:.2f}' for x in qts)})")
    print(f"  ratio    {vt / qt:6.2f}x QEMU's time (target <= 1.0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
