"""Tables, CSV and JSON of a ``viridian measure`` sweep."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from viridian.lab.experiments import Experiment
from viridian.report.text import table

CSV_FIELDS = ("experiment", "config", "offer", "vcpus", "params", "operations", "figure", "value", "per_operation",
              "model", "reduction_pct", "command")


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _change(r: dict[str, Any], red: float | None) -> str:
    if r["config"] == r.get("baseline"):
        return "baseline"
    if red is None:
        return "-"
    return f"{-red:+.1f} %" if red else "same"


def table_lines(e: Experiment, rows: list[dict[str, Any]]) -> list[str]:
    """One line per point: exits, APIC exits, the primary figure per operation, the model, the reduction."""
    swept = sorted({k for r in rows for k, v in r["params"].items() if k != "n" and
                    len({repr(x["params"].get(k)) for x in rows}) > 1})
    head = ["config", "vCPUs", *swept, "ops", "exits", "exits/op", "APIC exits", e.primary, f"{e.primary}/op",
            "model", "vs " + (rows[0].get("baseline", "") if rows else "")]
    body = []
    for r in rows:
        f, per = r["figures"], r["per_operation"]
        model = r["model"].get(e.primary) if r["model"] else None
        mark = "" if r.get("model_matches", True) else " (!)"
        red = r.get("reduction_pct")
        body.append([r["config"], r["vcpus"], *[r["params"][k] for k in swept], r["operations"], _fmt(f["exits"]),
                     _fmt(per["exits"]), _fmt(f["apic_exits"]), _fmt(f[e.primary]), _fmt(per[e.primary]),
                     _fmt(model) + mark, _change(r, red)])
    right = tuple(range(1, len(head)))
    return [f"== {e.name}: {e.title} (differential: run with n minus run with n=0)" if e.differential
            else f"== {e.name}: {e.title}", *table(head, body, right=right)]


def to_json(results: dict[str, list[dict[str, Any]]]) -> str:
    return json.dumps({"experiments": results}, indent=2)


def to_csv(results: dict[str, list[dict[str, Any]]]) -> str:
    """Long format: one line per (point, figure)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_FIELDS)
    for rows in results.values():
        for r in rows:
            for fig, value in r["figures"].items():
                model = (r["model"] or {}).get(fig)
                w.writerow([r["experiment"], r["config"], r["offer"], r["vcpus"],
                            " ".join(f"{k}={v}" for k, v in sorted(r["params"].items())), r["operations"], fig,
                            value, r["per_operation"][fig], "" if model is None else model,
                            "" if r.get("reduction_pct") is None else r["reduction_pct"], r["command"]])
    return buf.getvalue()
