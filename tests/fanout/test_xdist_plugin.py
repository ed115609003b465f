"""The pytest plugin under pytest-xdist (issue 21): its fixtures share no temp paths or global state, so the
plugin example passes with two worker processes, each building its guests in its own tmp_path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("xdist", reason="pytest-xdist is not installed (the test extra installs it)")

ROOT = Path(__file__).resolve().parents[2]


def test_plugin_example_under_two_workers(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "-p", "no:cacheprovider", "-o", "addopts=", "-v",
                          "--basetemp", str(tmp_path / "base"), str(ROOT / "tests" / "test_plugin_example.py")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    out = res.stdout
    assert "created: 2/2 workers" in out and " passed" in out and " failed" not in out
    assert out.count("[gw0]") + out.count("[gw1]") >= 4  # every case ran on a worker
