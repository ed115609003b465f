"""Snapshot / restore (issue 8 part 4): a guest checking reference time (TSC page + TIME_REF_COUNT) passes
across a snapshot; resumed multi-vCPU guests finish like uninterrupted ones; damaged snapshots are refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

RUN = [sys.executable, "-m", "viridian"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RUN, *args], capture_output=True, text=True)


def test_reference_time_survives_a_snapshot(guests: Path, tmp_path: Path) -> None:
    snap = tmp_path / "t.snap"
    first = cli("run", str(guests / "timecheck.elf"), "--snapshot-at", "15000000", "--snapshot", str(snap), "--quiet")
    assert first.returncode == 0 and "snapshot at tick" in first.stderr, first.stderr
    assert snap.stat().st_size > 0
    res = cli("resume", str(snap))
    assert res.returncode == 0, res.stdout + res.stderr  # 120/121/122 would mean time broke across the resume
    assert "timecheck: 400 rounds" in res.stdout


@pytest.mark.parametrize(("image", "vcpus", "at"), [("win8.elf", 2, 1_500_000), ("hv_ipi.elf", 4, 100_000)])
def test_resumed_guests_finish(guests: Path, tmp_path: Path, image: str, vcpus: int, at: int) -> None:
    snap = tmp_path / "g.snap"
    whole = cli("run", str(guests / image), "--vcpus", str(vcpus), "--quiet")
    cli("run", str(guests / image), "--vcpus", str(vcpus), "--snapshot-at", str(at), "--snapshot", str(snap),
        "--quiet")
    res = cli("resume", str(snap), "--quiet")
    assert res.returncode == whole.returncode == 0, res.stderr


@pytest.mark.parametrize("damage", ["truncate", "flip", "magic", "image"])
def test_damaged_snapshots_are_refused(guests: Path, tmp_path: Path, damage: str) -> None:
    image = tmp_path / "timecheck.elf"
    image.write_bytes((guests / "timecheck.elf").read_bytes())
    snap = tmp_path / "t.snap"
    cli("run", str(image), "--snapshot-at", "5000000", "--snapshot", str(snap), "--quiet")
    blob = bytearray(snap.read_bytes())
    if damage == "truncate":
        snap.write_bytes(bytes(blob[: len(blob) // 2]))
    elif damage == "flip":
        blob[-10] ^= 0xFF
        snap.write_bytes(bytes(blob))
    elif damage == "magic":
        snap.write_bytes(b"not a snapshot" + bytes(blob))
    else:
        image.write_bytes(image.read_bytes() + b"\0")
    res = cli("resume", str(snap))
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr, res.stderr


def test_snapshot_at_before_the_first_quantum_ends(guests: Path, tmp_path: Path) -> None:
    """Issue 17 item 5: hello.elf ends within its first quantum; --snapshot-at 1000 still lands there."""
    snap = tmp_path / "h.snap"
    res = cli("run", str(guests / "hello.elf"), "--snapshot-at", "1000", "--snapshot", str(snap), "--quiet")
    assert res.returncode == 0 and "(asked for 1000)" in res.stderr, res.stderr
    tick = int(res.stderr.split("snapshot at tick ")[1].split()[0])
    assert 1000 <= tick < 1000 + 4096  # the first block boundary where the clock reached 1000 (a block < a page)
    again = cli("resume", str(snap))
    assert again.returncode == 0 and again.stdout == cli("run", str(guests / "hello.elf")).stdout


def test_a_guest_that_ends_before_the_snapshot_time_says_so(guests: Path, tmp_path: Path) -> None:
    snap = tmp_path / "never.snap"
    res = cli("run", str(guests / "hello.elf"), "--snapshot-at", "1000000000", "--snapshot", str(snap), "--quiet")
    assert res.returncode == 2 and not snap.exists(), res.stderr
    assert res.stderr.count("\n") == 1 and "before --snapshot-at 1000000000: no snapshot written" in res.stderr


@pytest.mark.parametrize("args", [["--snapshot-at", "5"], ["--snapshot-at", "0", "--snapshot", "x.snap"],
                                  ["--snapshot-at", "99", "--max-ticks", "99", "--snapshot", "x.snap"]])
def test_bad_snapshot_options_are_one_line(guests: Path, tmp_path: Path, args: list[str]) -> None:
    res = subprocess.run([*RUN, "run", str(guests / "hello.elf"), *args], capture_output=True, text=True,
                         cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and not list(tmp_path.iterdir()), res.stderr
