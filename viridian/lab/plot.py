"""Charts of a sweep (matplotlib, Agg backend): the primary figure per operation, grouped bars (one group per vCPU
count, one bar per configuration) so equal values stay visible."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from viridian.errors import UserError
from viridian.lab.experiments import Experiment


def require_matplotlib() -> Any:
    """matplotlib.pyplot with the Agg backend; a one-line UserError when the [plot] extra is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("charts need matplotlib: pip install 'viridian-tlfs[plot]' (or pip install matplotlib)") \
            from None
    return plt


def axis(e: Experiment, rows: list[dict[str, Any]]) -> tuple[str, list[str], dict[tuple[str, int], float], bool]:
    """What the chart plots: (y label, configurations, value per (config, vCPUs), integer ticks?). Times per
    operation below 1 ms are shown in µs; percentages are the figure itself, not per operation."""
    fig = e.chart_figure
    configs = list(dict.fromkeys(r["config"] for r in rows))
    per_op = not fig.endswith("_pct")
    vals = {(r["config"], r["vcpus"]): float((r["per_operation"] if per_op else r["figures"]).get(fig) or 0)
            for r in rows}
    name, unit = fig.replace("_", " "), ""
    if fig.endswith("_ms"):
        name, unit = fig[:-3].replace("_", " "), "ms"
        if vals and max(vals.values()) < 1:
            vals, unit = {k: round(v * 1000, 3) for k, v in vals.items()}, "µs"
    elif fig.endswith("_pct"):
        name, unit = fig[:-4].replace("_", " "), "%"
    label = f"{name} ({unit})" if unit else name
    if per_op:
        label += f" per {e.operation}"
    integer = not unit and all(float(v).is_integer() for v in vals.values())
    return label, configs, vals, integer


def plot(e: Experiment, rows: list[dict[str, Any]], path: str | Path) -> Path:
    plt = require_matplotlib()
    from matplotlib.ticker import MaxNLocator

    out = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    unit, configs, values, integer = axis(e, rows)
    counts = sorted({r["vcpus"] for r in rows})
    width = 0.8 / max(1, len(configs))
    for i, c in enumerate(configs):  # grouped bars: one group per vCPU count, one bar per configuration
        vals = [values.get((c, n), 0.0) for n in counts]
        xs = [j + (i - (len(configs) - 1) / 2) * width for j in range(len(counts))]
        bars = ax.bar(xs, vals, width, label=c)
        ax.bar_label(bars, fmt="%g", fontsize=7)
    ax.set_xticks(range(len(counts)), [str(n) for n in counts])
    if integer:  # counts: no fractional ticks
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("vCPUs")
    ax.legend(fontsize=8)
    ax.set_ylabel(unit)
    ax.set_title(f"{e.name}: {e.title}", fontsize=10)  # the y label says what is plotted, in which unit
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    plt.close(fig)
    return out
