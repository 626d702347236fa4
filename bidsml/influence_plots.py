"""The diagnostics artifact's picture: per-task influence distributions, raw and normalised (a file it holds)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_influence_distributions(A, tasks: list[str], path: Path) -> Path:
    """Saves per-task influence distributions, raw and column-normalised, side by side; returns the path.

    Raw scores show which tasks intrinsically get larger influence (and so
    dominate LESS); after BIDS's normalisation the tasks are comparable.
    """
    import numpy as np

    from bidsml.selection import normalize_columns

    names = sorted(set(tasks))
    labels = np.asarray(tasks)
    Z, kept = normalize_columns(np.asarray(A, dtype=np.float32))
    zl = labels[kept]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    axes[0].boxplot([np.asarray(A)[:, labels == t].ravel() for t in names], showfliers=False)
    axes[0].set_title("raw influence per task")
    axes[1].boxplot([Z[:, zl == t].ravel() if (zl == t).any() else [0.0] for t in names], showfliers=False)
    axes[1].set_title("normalised influence (z-score per validation example)")
    for ax in axes:
        ax.set_xticks(range(1, len(names) + 1), names, rotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
