"""Charts of a sweep (matplotlib, Agg backend): the primary figure per operation, grouped bars (one group per vCPU
count, one bar per configuration) so equal values stay visible."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from viridian.errors import UserError
from viridian.lab.experiments import Experiment


def plot(e: Experiment, rows: list[dict[str, Any]], path: str | Path) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - a dependency
        raise UserError("--plot needs matplotlib: pip install matplotlib (make test installs it)") from None
    out = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    configs = list(dict.fromkeys(r["config"] for r in rows))
    counts = sorted({r["vcpus"] for r in rows})
    unit = f"{e.primary.replace('_', ' ')} per {e.operation}"
    width = 0.8 / max(1, len(configs))
    for i, c in enumerate(configs):  # grouped bars: one group per vCPU count, one bar per configuration
        vals = [next((r["per_operation"][e.primary] for r in rows if r["config"] == c and r["vcpus"] == n), 0) or 0
                for n in counts]
        xs = [j + (i - (len(configs) - 1) / 2) * width for j in range(len(counts))]
        bars = ax.bar(xs, vals, width, label=c)
        ax.bar_label(bars, fmt="%g", fontsize=7)
    ax.set_xticks(range(len(counts)), [str(n) for n in counts])
    ax.set_xlabel("vCPUs")
    ax.legend(fontsize=8)
    ax.set_ylabel(unit)
    ax.set_title(f"{e.name}: {e.title}", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    plt.close(fig)
    return out
