"""Serial output reaches stdout as the guest writes it (issue 18 item 4): line by line, flushed, so a killed run
keeps every line finished before the end of its last run slice."""

from __future__ import annotations

import io
import os
import selectors
import signal
import subprocess
import sys
from pathlib import Path

from viridian.cli.serial_out import LineWriter

ROOT = Path(__file__).resolve().parents[2]


class Recorder(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushed: list[str] = []

    def flush(self) -> None:
        self.flushed.append(self.getvalue())


def test_lines_are_flushed_as_they_complete() -> None:
    out = Recorder()
    w = LineWriter(out)
    for b in b"ab":
        w(bytes((b,)))
    assert out.flushed == []
    w(b"c\nd")
    assert out.flushed == ["abc\nd"]
    w(b"\xe2\x82")  # half a UTF-8 character: held back by the decoder
    w(b"\xac\n")
    assert out.flushed[-1] == "abc\nd\u20ac\n"
    w(b"tail\xff")
    w.close()
    assert out.getvalue() == "abc\nd\u20ac\ntail\ufffd"  # what Serial16550.text() decodes


def test_prefixed_lines_and_a_closed_stream() -> None:
    out = Recorder()
    w = LineWriter(out, "[partition 1] ")
    w(b"one\ntw")
    w(b"o\nthree")
    w.close()
    assert out.getvalue() == "[partition 1] one\n[partition 1] two\n[partition 1] three"
    out.close()
    w(b"more\n")  # the stream is gone: output stops, nothing raises
    assert w.broken


def selectors_wait(stream: object, seconds: float) -> bool:
    sel = selectors.DefaultSelector()
    sel.register(stream, selectors.EVENT_READ)  # type: ignore[arg-type]
    return bool(sel.select(seconds))


def test_a_killed_run_keeps_what_the_guest_printed(guests: Path) -> None:
    """win7 with a long workload prints its negotiation lines early, then runs for minutes of host time; the
    process is killed once a line has arrived, and everything printed by then is on the pipe."""
    cmd = [sys.executable, "-m", "viridian", "run", str(guests / "win7.elf"), "--vcpus", "1",
           "--cmdline", "ticks=100000000", "--max-ticks", "10000000000000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT,
                            start_new_session=True)
    try:
        assert proc.stdout is not None
        # the first line arrives while the guest still runs (a hang guard, not a timing assertion: without
        # streaming nothing would arrive before the end of the run, hours away)
        assert selectors_wait(proc.stdout, 300), "no serial line within 300 s"
        first = proc.stdout.readline()
        assert first.startswith(b"style: win7 "), first
        assert proc.poll() is None  # still running: the line came out before the run ended
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        rest = proc.stdout.read() if proc.stdout else b""
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not rest.endswith(b"viridian:")  # nothing from the end-of-run path
