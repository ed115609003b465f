"""`viridian boot` writes the kernel's console as it is produced (issue 18 item 4): the root-mount panic line is
on stdout while the process still runs (the panic spins until the tick budget; nothing is printed at the end),
and killing it then loses nothing."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_panic_line_arrives_before_the_run_ends(kernel: str) -> None:
    cmd = [sys.executable, "-m", "viridian", "boot", kernel, "--append", "console=ttyS0 panic=0 nokaslr",
           "--max-ticks", str(10**15)]  # panic=0: the kernel spins after the panic, the run goes on
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT, start_new_session=True)
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    seen = b""
    try:
        while b"Kernel panic - not syncing" not in seen:
            assert sel.select(300), "no console output for 300 s"  # a hang guard, not a timing assertion
            chunk = os.read(proc.stdout.fileno(), 65536)
            assert chunk, f"the run ended before the panic line: {seen[-2000:]!r}"
            seen += chunk
        assert proc.poll() is None  # the kernel is still spinning in panic(): the log came out while it ran
        assert b"Linux version" in seen
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
