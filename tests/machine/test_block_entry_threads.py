"""Block entry (csrc/block_entry.c) for a machine that runs in a thread other than the main one, as fan-out's
Dask workers run tasks. There glibc allocates from a per-thread arena, which in a fresh process lies next to
the engine's code buffer, so TCG loads the engine handle at every block start with `lea disp32(%rip)` (7 bytes)
instead of a movabs (10): block entry must patch that form too (no block-hook fallback) and count exactly what
a main-thread run counts, with engines of both forms alternating in one process."""

from __future__ import annotations

import functools
import json
import logging
import platform
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from viridian.config.presets import load_config
from viridian.machine.loader import load_image
from viridian.machine.machine import Machine
from viridian.report.run import stats_json

# where a patched block's entry call returns, past its host code's start: movabs (10) or lea (7), then
# xor %esi,%esi (2) and the call (5; the far form is rewritten to end there too)
MOVABS_END, LEA_END = 17, 14
GUESTS = [("hello.elf", 1), ("ipi.elf", 2), ("loop_alu.elf", 1)]


def _run(path: Path, vcpus: int) -> tuple[Machine, dict[str, Any]]:
    m = Machine(load_config(preset="recommended"), load_image(path), vcpus=vcpus, max_ticks=4_000_000_000)
    m.run()
    return m, stats_json(m)


def _in_thread(fn: Callable[[], Any]) -> Any:
    out: list[Any] = []
    errors: list[BaseException] = []

    def body() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    t = threading.Thread(target=body)
    t.start()
    t.join()
    if errors:
        raise errors[0]
    return out[0]


def _summary(m: Machine, s: dict[str, Any]) -> dict[str, Any]:
    """What a run shows (result, exits, serial, virtual time, each vCPU's clock and block count), and how its
    blocks were entered."""
    keep = {k: s[k] for k in ("result", "exits", "apic", "serial", "time")}
    keep["clocks"] = [(int(v.native.bytes), int(v.native.blocks)) for v in m.vcpus]
    entry = [(int(v.native.tb_patch), int(v.native.tb_patched) > 0, v.block_hooked,
              v.stats.events.get("tb_patch_failed", 0), int(v.native.tb_back)) for v in m.vcpus]
    return {"observable": keep, "entry": entry}


def _assert_native(entry: list[Any]) -> list[int]:
    """Every vCPU's blocks started in vn_tb_enter, none through the block hook; the calls' return offsets."""
    for patch, patched, hooked, failed, _ in entry:
        assert (patch, patched, hooked, failed) == (1, True, False, 0), entry
    return [back for *_, back in entry]


def _child(guests: Path) -> None:
    """In a fresh process (its address space as a fan-out worker's): each guest in a thread, then in the
    main thread -- so a lea engine also follows a movabs one. JSON on stdout."""
    out = []
    for guest, vcpus in GUESTS:
        for where in ("thread", "main"):
            job = functools.partial(_run, guests / guest, vcpus)
            run = _in_thread(job) if where == "thread" else job()
            out.append({"guest": guest, "where": where, **_summary(*run)})
    print(json.dumps(out))


def test_engines_made_in_threads_enter_blocks_natively_and_count_the_same(guests: Path) -> None:
    proc = subprocess.run([sys.executable, __file__, str(guests)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "could not be patched" not in proc.stderr, proc.stderr
    runs = json.loads(proc.stdout.splitlines()[-1])
    assert [(r["guest"], r["where"]) for r in runs] == [(g, w) for g, _ in GUESTS for w in ("thread", "main")]
    for thread, main in zip(runs[::2], runs[1::2], strict=True):
        assert (main["observable"]["result"]["status"], main["observable"]["result"]["code"]) == ("exit", 0)
        assert thread["observable"] == main["observable"], thread["guest"]
        backs = _assert_native(thread["entry"]) + _assert_native(main["entry"])
        off = backs[-1] - MOVABS_END  # where a block's host code starts in its TranslationBlock (one build)
        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            # the case this file is about: glibc's main arena (brk) lies far from the code buffers, and a
            # fresh process's thread arena near them
            assert backs == [off + LEA_END] * len(thread["entry"]) + [off + MOVABS_END] * len(main["entry"])


def test_a_machine_in_a_thread_of_a_long_lived_process(guests: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Here the engine's form depends on what the process allocated before (either is patched)."""
    caplog.set_level(logging.WARNING)
    main = _summary(*_run(guests / "ipi.elf", 2))
    thread = _summary(*_in_thread(lambda: _run(guests / "ipi.elf", 2)))
    assert not [r for r in caplog.records if "could not be patched" in r.getMessage()]
    assert thread["observable"] == main["observable"]
    (main_back, *_), (thread_back, *_) = _assert_native(main["entry"]), _assert_native(thread["entry"])
    assert thread_back - main_back in (0, LEA_END - MOVABS_END)


if __name__ == "__main__":
    _child(Path(sys.argv[1]))
