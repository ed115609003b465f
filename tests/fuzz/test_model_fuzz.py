"""The seeded CI-sized model-level fuzz run (issue 8: `make fuzz` runs the long one), and proof that each oracle
fires on a partition broken on purpose."""

from __future__ import annotations

import pytest

from viridian.fuzz.model import MEM, Campaign, campaign


def test_seeded_campaign_finds_nothing() -> None:
    results = campaign(24_000, seed=20261201)
    assert sum(r.operations for r in results) == 24_000
    assert [f for r in results for f in r.failures] == []
    answers: dict[str, int] = {}
    for r in results:
        for k, v in r.statuses.items():
            answers[k] = answers.get(k, 0) + v
    assert answers.get("SUCCESS", 0) > 100  # the campaign reaches the handlers, not only the ABI checks
    assert {"INVALID_HYPERCALL_INPUT", "INVALID_ALIGNMENT", "INVALID_HYPERCALL_CODE"} <= set(answers)


def test_same_seed_same_campaign() -> None:
    a, b = Campaign(7).run(3000), Campaign(7).run(3000)
    assert a.by_kind == b.by_kind and a.statuses == b.statuses


@pytest.mark.parametrize("breakage", ["raise", "stray-write", "bad-status"])
def test_oracles_fire(breakage: str) -> None:
    c = Campaign(3)
    real = c.part.hypercall

    def broken(vp: int, regs: object) -> object:
        out = real(vp, regs)  # type: ignore[arg-type]
        if breakage == "raise":
            raise RuntimeError("handler bug")
        if breakage == "stray-write":
            c.memory.write(MEM - 4096 - 64, b"\xEE" * 8)  # a page no call may write... unless it is an output
        if breakage == "bad-status":
            out.status, out.fault, out.continued = None, None, False
        return out

    c.part.hypercall = broken  # type: ignore[method-assign]
    res = c.run(2000)
    kinds = {f.kind for f in res.failures}
    assert res.failure_count > 0
    assert ("exception" if breakage == "raise" else "hypercall") in kinds
