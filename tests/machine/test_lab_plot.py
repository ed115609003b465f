"""Charts of viridian measure: each axis says what is plotted (units, per what), counts get integer ticks, and a
chart without matplotlib is one UserError line."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from viridian.errors import UserError
from viridian.lab.experiments import EXPERIMENTS
from viridian.lab.plot import axis, require_matplotlib


def _row(config: str, figures: dict[str, float], ops: int, vcpus: int = 1) -> dict[str, Any]:
    return {"config": config, "vcpus": vcpus, "figures": figures,
            "per_operation": {k: round(v / ops, 4) for k, v in figures.items()}}


# (experiment, rows, expected label, expected values, integer ticks)
CASES = [
    ("eoi", [_row("xapic", {"eoi_exits": 50, "exits": 150}, 50), _row("hv-assist", {"eoi_exits": 0, "exits": 100}, 50)],
     "eoi exits per interrupt", {("xapic", 1): 1.0, ("hv-assist", 1): 0.0}, True),
    # 200 acquisitions in 2.92 ms: 0.0146 ms each is shown as 14.6 µs
    ("spin", [_row("ple", {"time_ms": 2.92}, 200, 4)], "time (µs) per acquisition", {("ple", 4): 14.6}, False),
    # the idle chart shows the CPU share its title names, as a percentage (not per run, not ms)
    ("idle", [_row("poll", {"time_ms": 2.0, "busy_share_pct": 50.1}, 1), _row("hlt", {"time_ms": 1.0,
                                                                                   "busy_share_pct": 99.2}, 1)],
     "busy share (%)", {("poll", 1): 50.1, ("hlt", 1): 99.2}, False),
    ("ipi", [_row("hypercall", {"sender_exits": 15}, 10, 2)], "sender exits per round", {("hypercall", 2): 1.5},
     False),
]


@pytest.mark.parametrize(("name", "rows", "label", "values", "integer"), CASES, ids=[c[0] for c in CASES])
def test_axis_names_what_is_plotted(name: str, rows: list[dict[str, Any]], label: str,
                                    values: dict[tuple[str, int], float], integer: bool) -> None:
    got_label, configs, got_values, got_integer = axis(EXPERIMENTS[name], rows)
    assert got_label == label
    assert got_values == pytest.approx(values)
    assert got_integer is integer
    assert configs == list(dict.fromkeys(r["config"] for r in rows))


def test_idle_title_and_chart_agree() -> None:
    e = EXPERIMENTS["idle"]
    assert "share" in e.title.lower() and e.chart_figure.endswith("_pct")


def test_missing_matplotlib_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(UserError) as info:
        require_matplotlib()
    assert "viridian-tlfs[plot]" in str(info.value) and "\n" not in str(info.value)
