"""Guest-level tests: real guest images from fixtures/ run on the Unicorn machine."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "fixtures" / "build"


@pytest.fixture(scope="session")
def guests() -> Path:
    """Build the fixture guests (gcc/binutils) once per session; the Makefile does the same."""
    subprocess.run(["make", "-s", "-C", str(ROOT / "fixtures")], check=True)
    return BUILD
