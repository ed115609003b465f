"""Local APIC tests: fixtures, and the shared ``apic_harness`` module made importable.

pytest runs in importlib mode, which never puts test directories on ``sys.path``; the harness module has a
name unique to this directory so adding the directory cannot shadow anything else.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from apic_harness import enable  # noqa: E402

from viridian.clock import VirtualClock  # noqa: E402
from viridian.devices.lapic import LocalApic  # noqa: E402


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def apic(clock: VirtualClock) -> LocalApic:
    """A software-enabled xAPIC (VP 0) without a bus; EOI broadcasts recorded in ``apic.broadcasts``."""
    broadcasts: list[int] = []
    a = LocalApic(0, clock, on_eoi_broadcast=broadcasts.append)
    a.broadcasts = broadcasts  # type: ignore[attr-defined]
    return enable(a)
