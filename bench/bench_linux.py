"""Debian's cloud kernel on viridian vs QEMU TCG, both plain PCs (issue 18 "Performance", issue 19's 4-vCPU figure).

1 vCPU: the kernel to its root-mount panic, viridian ``--preset none`` (and ``recommended``, for reference) vs
``qemu-system-x86_64 -machine pc -accel tcg,thread=single``, same kernel and command line. 4 vCPUs: the kernel
with the test initramfs (fixtures/initramfs) to the init program's exit, viridian ``recommended`` vs QEMU TCG
``-smp 4`` (the exit port 0xF4 is QEMU's isa-debug-exit there). CPU time is the children's rusage (user + sys)
of each run, wall time its elapsed time; RUNS interleaved rounds, medians and ranges. Never a timed test: it
prints numbers. Skips with a reason when the kernel cannot be fetched or qemu-system-x86_64 is missing.
The anchor gets no handicap: with 4 vCPUs QEMU runs both ways, one host thread for all vCPUs
(``thread=single``) and one per vCPU (MTTCG, ``thread=multi``), and each ratio is taken against the better
QEMU median of that measure (on a 2-core host single wins both; with more cores MTTCG wins wall time).
The summary at the end repeats the two ratios the issues set targets for (<= 1.0x CPU).
Run: make bench-linux (BENCH_LINUX_RUNS=N, BENCH_LINUX_PARTS=1,4 to choose).
"""

from __future__ import annotations

import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from viridian.cli.fetch_kernel_cmd import fetch_kernel
from viridian.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
INITRD = ROOT / "fixtures" / "build" / "initramfs.cpio"
PANIC = "VFS: Unable to mount root fs"
INIT_EXIT = "viridian-init: exit 0"
APPEND = "console=ttyS0 panic=-1"
APPEND_INITRD = "console=ttyS0 panic=-1 nokaslr viridian.iters=40"
# viridian's CPUID (viridian/machine/cpuid_base.py) is an Intel family-6 part with SSE..SSE4.2, POPCNT, CX16,
# RDTSCP, 1 GiB pages, LAHF, LZCNT and no AVX/XSAVE/PCID: QEMU's Nehalem model plus RDTSCP, pdpe1gb and ABM is
# the same ISA level (qemu64 lacks SSE4/POPCNT, so the kernel would pick other code paths; max adds AVX etc.).
# x2APIC, TSC-deadline and invariant TSC are not offered: QEMU 7.2's TCG cannot do them (it warns and drops
# them); with --preset none Linux uses the xAPIC through MMIO on viridian too.
QEMU_CPU = "Nehalem,+rdtscp,+pdpe1gb,+abm"
TIMEOUT = 1800


@dataclass
class Series:
    """The CPU and wall times of one configuration's runs."""

    name: str
    cpu: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)

    def line(self) -> str:
        def fmt(xs: list[float]) -> str:
            return f"{statistics.median(xs):7.2f} s [{min(xs):.2f} .. {max(xs):.2f}]"

        return f"  {self.name:<34} CPU {fmt(self.cpu)}   wall {fmt(self.wall)}"


def timed(cmd: list[str]) -> tuple[float, float, int, str]:
    """(children's CPU seconds, wall seconds, exit status, stdout+stderr) of one run of CMD."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         timeout=TIMEOUT, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall, res.returncode, res.stdout.decode("utf-8", "replace")


def viridian_cmd(kernel: Path, preset: str, vcpus: int, initrd: bool) -> list[str]:
    cmd = [sys.executable, "-m", "viridian", "boot", str(kernel), "--machine", "pc", "--preset", preset,
           "--vcpus", str(vcpus), "--max-ticks", "40000000000"]
    if initrd:
        return [*cmd, "--initrd", str(INITRD), "--append", APPEND_INITRD]
    return [*cmd, "--append", APPEND]


def qemu_cmd(qemu: str, kernel: Path, vcpus: int, initrd: bool, thread: str = "single") -> list[str]:
    cmd = [qemu, "-machine", "pc", "-nodefaults", "-accel", f"tcg,thread={thread}", "-cpu", QEMU_CPU, "-m", "256",
           "-smp", str(vcpus), "-kernel", str(kernel)]
    if initrd:  # the init program's OUT to 0xF4 ends QEMU with status (code << 1) | 1
        cmd += ["-initrd", str(INITRD), "-append", APPEND_INITRD, "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
    else:
        cmd += ["-append", APPEND]
    return [*cmd, "-serial", "stdio", "-display", "none", "-no-reboot"]


def first_bad(out: str, want: str) -> str:
    """Why a run did not end as expected: its first oops/BUG line, else its last line."""
    lines = out.splitlines()
    for ln in lines:
        if any(k in ln for k in ("Oops", "BUG:", "general protection", "Kernel panic") if k not in want):
            return ln.strip()
    return lines[-1].strip() if lines else "(no output)"


def part(title: str, configs: list[tuple[str, list[str], str]], runs: int) -> list[Series] | None:
    """RUNS interleaved rounds of every (name, command, expected text); None if a run did not end as expected."""
    print(title)
    for name, cmd, _ in configs:
        print(f"  {name}: {shlex.join(cmd)}")
    series = [Series(name) for name, _, _ in configs]
    for i in range(runs):
        for s, (name, cmd, want) in zip(series, configs, strict=True):
            print(f"bench-linux: round {i + 1}/{runs}: {name} ...", file=sys.stderr, flush=True)
            cpu, wall, rc, out = timed(cmd)
            if want not in out:
                print(f"bench-linux: {name} (exit status {rc}) did not reach {want!r}: {first_bad(out, want)}")
                return None
            s.cpu.append(cpu)
            s.wall.append(wall)
            print(f"bench-linux:   CPU {cpu:.2f} s, wall {wall:.2f} s", file=sys.stderr, flush=True)
    print(f"  {runs} interleaved runs each; median [min .. max]:")
    for s in series:
        print(s.line())
    return series


def ratio(a: Series, anchors: list[Series], what: str) -> str:
    """``a`` against the anchors' best (lowest) median of each measure; prints and returns the line."""
    ca, wa = statistics.median(a.cpu), statistics.median(a.wall)
    cb = min(anchors, key=lambda b: statistics.median(b.cpu))
    wb = min(anchors, key=lambda b: statistics.median(b.wall))
    line = (f"{what}: CPU time {ca / statistics.median(cb.cpu):.2f}x"
            + (f" (vs {cb.name})" if len(anchors) > 1 else "")
            + f", wall time {wa / statistics.median(wb.wall):.2f}x"
            + (f" (vs {wb.name})" if len(anchors) > 1 else "") + " (ratios of medians)")
    print(f"  {line}")
    return line


def main() -> int:
    try:
        kernel = fetch_kernel()
    except UserError as exc:
        print(f"bench-linux: skipped: {exc}")
        return 0
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        print("bench-linux: skipped: qemu-system-x86_64 not installed (make qemu)")
        return 0
    runs = max(1, int(os.environ.get("BENCH_LINUX_RUNS", "5")))
    parts = os.environ.get("BENCH_LINUX_PARTS", "1,4").split(",")
    print(f"bench-linux: {kernel}; host load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    ok, summary = True, []
    if "1" in parts:
        s = part(f"1 vCPU, to '{PANIC}' (append {APPEND!r}):",
                 [("QEMU TCG", qemu_cmd(qemu, kernel, 1, False), PANIC),
                  ("viridian --preset none", viridian_cmd(kernel, "none", 1, False), PANIC),
                  ("viridian --preset recommended", viridian_cmd(kernel, "recommended", 1, False), PANIC)], runs)
        if s is None:
            ok = False
        else:
            summary.append(ratio(s[1], [s[0]], "1 vCPU: viridian none / QEMU TCG (target <= 1.0 CPU)"))
            ratio(s[2], [s[0]], "1 vCPU: viridian recommended / QEMU TCG")
    if "4" in parts:
        if not INITRD.exists():
            print(f"bench-linux: 4 vCPUs skipped: {INITRD} missing (make -s -C fixtures)")
        else:
            s = part(f"4 vCPUs, to {INIT_EXIT!r} (append {APPEND_INITRD!r}):",
                     [("QEMU TCG -smp 4", qemu_cmd(qemu, kernel, 4, True), INIT_EXIT),
                      ("QEMU TCG -smp 4 (MTTCG)", qemu_cmd(qemu, kernel, 4, True, "multi"), INIT_EXIT),
                      ("viridian --preset recommended", viridian_cmd(kernel, "recommended", 4, True), INIT_EXIT)],
                     runs)
            if s is None:
                ok = False
            else:
                summary.append(ratio(s[2], s[:2], "4 vCPUs: viridian recommended / QEMU TCG -smp 4 (target <= 1.0 CPU)"))
    if summary:
        print(f"summary (host load average {os.getloadavg()[0]:.1f} at the end):")
        for line in summary:
            print(f"  {line}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
