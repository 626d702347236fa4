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


def plot_projection_fidelity(rows: list[dict], min_fidelity: float, chosen: int, path: Path) -> Path:
    """Saves each task's fidelity (Spearman, projected vs exact) against k, the threshold and the chosen k."""
    ks = [r["k"] for r in rows]
    tasks = sorted({key[len("fidelity ") :] for r in rows for key in r if key.startswith("fidelity ")})
    fig, ax = plt.subplots(figsize=(7, 4))
    for task in tasks:
        ax.plot(ks, [r.get(f"fidelity {task}") for r in rows], marker="o", label=task)
    ax.axhline(min_fidelity, color="grey", linestyle="--", label=f"min_fidelity {min_fidelity}")
    if chosen in ks:
        ax.axvline(chosen, color="black", linestyle=":", label=f"chosen k = {chosen}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("projection dimension k")
    ax.set_ylabel("Spearman, projected vs exact task-mean influence")
    ax.set_title("influence fidelity by projection size (fidelity sample, first checkpoint)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
