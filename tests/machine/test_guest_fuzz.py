"""Machine-level fuzzing (issue 8 part 1b): real guest code on several vCPUs issues pseudo-random synthetic
MSR accesses and hypercalls (fixtures/guests/machine/fuzz_ops.S, seeded by the command line). Oracles: the
run completes (no host error, no engine error), every fault reached the guest as an exception it recovered
from, recorded state stays bounded, and the same seed gives the same exits."""

from __future__ import annotations

from pathlib import Path

import pytest

from viridian.config.presets import load_config
from viridian.machine.loader import load_image
from viridian.machine.machine import Machine
from viridian.machine.negotiation import MAX_DISTINCT
from viridian.report.run import stats_json


def fuzz(guests: Path, seed: int, vcpus: int, preset: str) -> dict:  # type: ignore[type-arg]
    m = Machine(load_config(preset=preset), load_image(guests / "fuzz_ops.elf"), vcpus=vcpus, cmdline=str(seed),
                max_ticks=4_000_000_000)
    m.run()
    assert len(m.neg.first) <= MAX_DISTINCT
    return stats_json(m)


@pytest.mark.parametrize(("seed", "vcpus", "preset"), [(1, 4, "all"), (2, 2, "recommended"), (3, 1, "xen-defaults"),
                                                       (4, 4, "none")])
def test_random_guest_operations_complete(guests: Path, seed: int, vcpus: int, preset: str) -> None:
    s = fuzz(guests, seed, vcpus, preset)
    assert (s["result"]["status"], s["result"]["code"]) == ("exit", 0), s["result"]
    assert f"fuzz_ops: {1500 * vcpus} operations" in s["serial"]
    assert s["exits"]["by_reason"].get("msr_write", 0) > 300 * vcpus
    assert s["exits"]["by_exception"].get("13", 0) > 0  # some operations were refused with #GP ...
    if preset != "none":
        assert s["exits"]["by_reason"].get("hypercall", 0) > 0  # ... and the hypercalls were answered


def test_same_seed_same_exits(guests: Path) -> None:
    a, b = fuzz(guests, 7, 2, "all"), fuzz(guests, 7, 2, "all")
    assert a["exits"] == b["exits"] and a["serial"] == b["serial"]
