"""Issue 19 item 5: nothing is kept alive after a run. Machine.close() (and ``with Machine(...)``) closes every
engine before RAM and native state can be freed (viridian/machine/unicorn/teardown.py); a closed machine is
ordinary garbage, an unclosed one is never freed under an engine that still reaches it."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import subprocess
import sys
import weakref
from pathlib import Path

from viridian.cli.main import main
from viridian.config.presets import load_config
from viridian.machine.lifetime import machines_closed
from viridian.machine.loader import load_image
from viridian.machine.machine import Machine
from viridian.report.run import stats_json

ROOT = Path(__file__).resolve().parents[2]


def _rss_mib() -> int:
    """Resident set after a collection and, on glibc, malloc_trim (freed heap goes back to the system: glibc
    otherwise keeps it for reuse, which a later machine does -- the RSS would then measure the allocator)."""
    gc.collect()
    with contextlib.suppress(AttributeError):  # not glibc: then the bound below must hold without it
        ctypes.CDLL(None).malloc_trim(0)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 // 2**20


def _machine(guests: Path, name: str, vcpus: int, cmdline: str = "", mem_mib: int = 128) -> Machine:
    return Machine(load_config(preset="recommended"), load_image(guests / name), vcpus=vcpus, mem_mib=mem_mib,
                   max_ticks=4_000_000_000, cmdline=cmdline)


# ten runs: SMP bring-up, a Windows-style guest with Ex hypercalls at 65 vCPUs, self-modifying code
TEN = [("hello.elf", 4, ""), ("win10.elf", 4, "ticks=3 spins=2"), ("hello.elf", 16, ""),
       ("win10.elf", 65, "ticks=2 spins=0"), ("smc.elf", 2, ""), ("jit.elf", 2, ""), ("sipi.elf", 2, ""),
       ("win10.elf", 8, "ticks=2 spins=0"), ("hello.elf", 16, ""), ("ipi.elf", 2, "")]


def test_ten_machines_in_one_process_give_their_memory_back(guests: Path) -> None:
    """Each closed machine is collected (its weakref dies) and the process's RSS after the tenth run is back
    near what it was before the 65-vCPU one (~270 MiB while it runs, ~100 MiB of it heap; kept alive, or
    freed only in part, it would stay)."""
    refs, rss = [], []
    for name, vcpus, cmdline in TEN:
        with _machine(guests, name, vcpus, cmdline, mem_mib=256 if vcpus > 64 else 128) as m:
            assert m.run().status == "exit", (name, m.result)
        refs.append(weakref.ref(m))
        del m
        gc.collect()
        rss.append(_rss_mib())
    assert [r() for r in refs] == [None] * len(TEN)
    assert rss[-1] <= rss[2] + 40, rss  # rss[2]: after the first three small runs (allocator warm)


def test_a_closed_machine_keeps_its_results(guests: Path) -> None:
    m = _machine(guests, "hello.elf", 2)
    m.run()
    before = stats_json(m)
    m.close()
    m.close()  # idempotent
    after = stats_json(m)
    for s in (before, after):
        s.pop("timing", None)
    assert after == before
    assert m.result is not None and m.result.status == "exit" and "hello" in m.ports.serial.text().lower()
    assert all(v.uc is None for v in m.vcpus)


def test_an_unclosed_machine_is_never_collected_under_its_engines(guests: Path) -> None:
    """Without close() nothing is freed behind the engines' backs: the machine stays (a leak, not a crash)."""
    m = _machine(guests, "hello.elf", 2)
    m.run()
    ref = weakref.ref(m)
    del m
    gc.collect()
    kept = ref()
    assert kept is not None
    kept.close()
    del kept
    gc.collect()
    assert ref() is None


def test_machines_closed_scope_closes_what_the_cli_built(guests: Path) -> None:
    """main(argv) closes every machine its command built (the fuzzers and tests call it in-process)."""
    seen: list[weakref.ref[Machine]] = []
    with machines_closed():
        m = _machine(guests, "hello.elf", 1)
        seen.append(weakref.ref(m))
        m.run()
        del m
    gc.collect()
    assert seen[0]() is None
    before = len([o for o in gc.get_objects() if isinstance(o, Machine)])
    assert main(["run", str(guests / "hello.elf"), "--vcpus", "2", "-q"]) == 0
    gc.collect()
    assert len([o for o in gc.get_objects() if isinstance(o, Machine)]) == before


STRESS = r"""
import gc, sys, threading, time
from viridian.config.presets import load_config
from viridian.machine.loader import load_image
from viridian.machine.machine import Machine
B = sys.argv[1]
GUESTS = [("hello.elf", 4, "", "minimal"), ("jit.elf", 2, "", "minimal"), ("smc.elf", 2, "", "minimal"),
          ("win10.elf", 4, "ticks=3 spins=2", "minimal"), ("sipi.elf", 2, "", "minimal"),
          ("multiboot.elf", 1, "", "pc"), ("hostile_pages.elf", 2, "", "minimal"), ("ioapic_smp.elf", 3, "", "pc"),
          ("linux.elf", 2, "", "minimal"), ("exc_resume.elf", 2, "", "minimal")]
stop = False
def collector():  # collections from another thread while an engine runs with the GIL released
    while not stop:
        gc.collect()
        time.sleep(0.002)
threading.Thread(target=collector, daemon=True).start()
gc.set_threshold(20, 1, 1)  # and collections inside the engines' hooks
for r in range(2):
    for name, n, cmdline, board in GUESTS:
        with Machine(load_config(preset="all"), load_image(B + "/" + name), vcpus=n, board=board,
                     max_ticks=2_000_000_000, **({"cmdline": cmdline} if cmdline else {})) as m:
            res = m.run()
        assert res.status == "exit", (name, res)
        del m
stop = True
print("ok")
"""


def test_many_machines_under_dev_mode_never_corrupt_the_heap(guests: Path) -> None:
    """Twenty closed machines in one ``python -X dev`` process (debug allocator hooks; glibc's MALLOC_CHECK_=3
    aborts on a double free), collected from a second thread and inside hooks: exit 0, no allocator report."""
    env = dict(os.environ, MALLOC_CHECK_="3", PYTHONFAULTHANDLER="1")
    proc = subprocess.run([sys.executable, "-X", "dev", "-W", "ignore", "-c", STRESS, str(guests)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
    assert "corruption" not in proc.stderr and "double free" not in proc.stderr
