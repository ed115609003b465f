"""Deterministic record / replay (issue 8 part 3): a replay of a 4-vCPU run is bit-identical in result, exits,
serial output and final state -- also for --fast runs, whose host clock readings are recorded."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "viridian", "run"]


@pytest.mark.parametrize("fast", [False, True])
def test_replay_of_a_four_vcpu_run_is_bit_identical(guests: Path, tmp_path: Path, fast: bool) -> None:
    rec = tmp_path / "run.json"
    args = [str(guests / "win7.elf"), "--vcpus", "4", "--cmdline", "ticks=3 ipis=2 tlb=2 spins=4 idle=1", "--quiet"]
    first = subprocess.run([*CLI, *args, *(["--fast"] if fast else []), "--record", str(rec)], capture_output=True,
                           text=True)
    data = json.loads(rec.read_text())
    assert data["format"] == "viridian-replay" and data["options"]["vcpus"] == 4
    assert bool(data["host_events"]["wall_clock"]) == fast
    again = subprocess.run([*CLI, "--replay", str(rec), "--quiet"], capture_output=True, text=True)
    assert "bit-identical" in again.stderr, again.stderr
    assert again.returncode == first.returncode


def test_a_tampered_record_is_detected(guests: Path, tmp_path: Path) -> None:
    rec = tmp_path / "run.json"
    subprocess.run([*CLI, str(guests / "hello.elf"), "--vcpus", "2", "--quiet", "--record", str(rec)], check=True)
    data = json.loads(rec.read_text())
    data["outcome"]["serial"] = "0" * 64
    rec.write_text(json.dumps(data))
    res = subprocess.run([*CLI, "--replay", str(rec), "--quiet"], capture_output=True, text=True)
    assert res.returncode == 1 and "DIFFERS in serial" in res.stderr


@pytest.mark.parametrize("damage", ["not json", "wrong format", "changed image"])
def test_bad_records_are_refused_clearly(guests: Path, tmp_path: Path, damage: str) -> None:
    image = tmp_path / "hello.elf"
    shutil.copy(guests / "hello.elf", image)
    rec = tmp_path / "run.json"
    subprocess.run([*CLI, str(image), "--quiet", "--record", str(rec)], check=True)
    if damage == "not json":
        rec.write_text("{truncated")
    elif damage == "wrong format":
        rec.write_text(json.dumps({"format": "other"}))
    else:
        image.write_bytes(image.read_bytes() + b"\0")
    res = subprocess.run([*CLI, "--replay", str(rec)], capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
