"""One PNG per evaluation run: score by meta-task, one bar per mode compared (matplotlib, no display)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io import atomic_write


def plot_meta_tasks(table: dict[str, dict[str, float]], path: Path, title: str) -> Path:
    """table: {series name (a mode, "oracle", "gen pass@4"): {meta-task label: score 0-100}}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = list(table)
    groups = list(dict.fromkeys(g for s in series for g in table[s]))
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(groups) + 2), 4.0))
    for i, name in enumerate(series):
        vals = [table[name].get(g, np.nan) for g in groups]
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, vals, width, label=name)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    ax.set_xticks(x, groups, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("score (hit@1 or ndcg_linear@5, x100)")
    ax.set_ylim(0, 105)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)
    return path
