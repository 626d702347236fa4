"""Does influence work on my data? The counterfactual check of a finished run (`bidsflow validate`).

For each target task t, models are fine-tuned exactly as the run does on
- `top`: the k pool rows with the highest influence on t (the task's mean over its validation columns),
- `random`: k random rows (one model per seed, shared by every task),
- `bottom`: the k rows with the lowest influence on t,
and, as the removal counterfactual (bergson's "query loss difference"), on a
fixed random base subset of the pool with
- `remove-top`: its k rows of highest influence on t removed,
- `remove-random`: k random rows of it removed (one per seed, shared).
Every arm is trained once per probe seed (the seed draws the random rows and
sets the fine-tune's data order and LoRA init), so the intervals carry the
variation across probe fine-tunes, not only across items. Each model's gold
NLL on t's scored items (never its validation examples) is compared with the
same seed's counterpart item by item: top - random, bottom - random and
remove-top - remove-random, each with a hierarchical bootstrap (seeds, then
items within seed; 95% interval). Influence predicts the effect on t when
top < random < bottom with both intervals excluding 0; a task with fewer
scored items than `min_items` gets no verdict ("too few scored items").

`half` models (`--lds N`) train on random halves of the pool; the linear
datamodeling score (TRAK) is the Spearman correlation, across those models, of
the predicted loss (minus the summed influence of the rows each was trained
on) with the actual loss of a scored item, averaged over items, with a
bootstrap interval over items. A query's prediction uses its task's mean
influence (the validation examples stand for the task's items).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from bidsml.errors import SelectionError
from bidsml.selection import top_k

ARMS = ("top", "bottom", "random", "remove-top", "remove-random", "half")
SHARED_ARMS = ("random", "remove-random", "half")  # do not depend on the task: one model serves every task
N_BOOT = 2000
BASE_SEED = 10_000  # the removal arms' base subset: the same rows for every task and seed


def arm_rows(arm: str, scores: np.ndarray | None, n: int, k: int, seed: int, base: int) -> np.ndarray:
    """Returns the sorted pool rows one probe model trains on.

    `scores`: the task's influence per pool row (needed by top, bottom and remove-top); `base`: the size of the
    removal arms' base subset. Random draws are seeded by (arm, seed), so every task shares them.
    """
    if arm not in ARMS:
        raise SelectionError(f"unknown arm {arm!r}; arms: {', '.join(ARMS)}")
    if arm == "half":
        return np.sort(np.random.default_rng([seed, 2]).choice(n, n // 2, replace=False))
    if not 1 <= k <= n:
        raise SelectionError(f"k = {k}: must be within 1..{n} (the pool's size)")
    if arm == "random":
        return np.sort(np.random.default_rng([seed, 0]).choice(n, k, replace=False))
    if arm in ("top", "bottom"):
        return np.sort(top_k(scores if arm == "top" else -scores, k))
    if not k < base <= n:
        raise SelectionError(f"the removal base subset has {base} rows: it must exceed k = {k} and be <= {n}")
    pool = np.sort(np.random.default_rng(BASE_SEED).choice(n, base, replace=False))
    if arm == "remove-top":
        gone = pool[top_k(scores[pool], k)]
    else:
        gone = np.random.default_rng([seed, 1]).choice(pool, k, replace=False)
    return np.setdiff1d(pool, gone)


def paired_difference(a: np.ndarray, b: np.ndarray, n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float, float]:
    """Returns (mean of a - b, 2.5% and 97.5% bootstrap percentiles), resampling the paired items."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    reps = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(1)
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return float(d.mean()), float(lo), float(hi)


def seeded_difference(a: np.ndarray, b: np.ndarray, n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float, float]:
    """Returns (mean of a - b, 2.5% and 97.5% percentiles) for (seeds, items) arrays paired by seed and item: a
    replicate draws seeds with replacement, then items with replacement within each drawn seed."""
    d = np.atleast_2d(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
    n_seeds, n_items = d.shape
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    items = rng.integers(0, n_items, size=(n_boot, n_seeds, n_items))
    reps = d[seeds[:, :, None], items].mean(axis=(1, 2))
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return float(d.mean()), float(lo), float(hi)


TOO_FEW = "too few scored items"


def verdict(
    top: tuple[float, float, float], bottom: tuple[float, float, float], n_items: int = 0, min_items: int = 0
) -> str:
    """Returns the task's verdict from top - random and bottom - random (mean, lo, hi) of the gold NLL; none below
    `min_items` scored items."""
    if n_items < min_items:
        return f"{TOO_FEW} ({n_items} < {min_items})"
    if top[2] < 0 < bottom[1]:
        return "influence predicts the effect on t"
    return "no evidence"


def task_table(nll: dict[str, pd.Series], tasks: Sequence[str], seeds: Sequence[int], min_items: int = 0) -> list[dict]:
    """Returns one row per task: the differences (each arm against the same seed's random arm), their hierarchical
    intervals and the verdict.

    `nll`: probe label -> per-item gold NLL (index: item id, with a `task` level); labels as `probe_label` writes.
    """
    rows = []
    for t in tasks:

        def items(arm: str, task: str) -> np.ndarray:
            """Returns (seeds, items) gold NLLs of an arm, items in the first seed's order."""
            cols = [nll[probe_label(arm, task, s)].xs(t, level="task") for s in seeds]
            return np.stack([c.loc[cols[0].index].to_numpy(np.float64) for c in cols])

        random, removed = items("random", ""), items("remove-random", "")
        top_nll, bottom_nll = items("top", t), items("bottom", t)
        top = seeded_difference(top_nll, random)
        bottom = seeded_difference(bottom_nll, random)
        removal = seeded_difference(items("remove-top", t), removed)
        n_items = random.shape[1]
        rows.append(
            {
                "task": t,
                "n_items": n_items,
                "n_seeds": len(seeds),
                "top_nll": float(top_nll.mean()),
                "random_nll": float(random.mean()),
                "bottom_nll": float(bottom_nll.mean()),
                **_triple("top_minus_random_nll", top),
                **_triple("bottom_minus_random_nll", bottom),
                **_triple("removal_top_minus_random_nll", removal),
                "verdict": verdict(top, bottom, n_items, min_items),
                "removal": TOO_FEW
                if n_items < min_items
                else "removing the top rows hurts t more than random removal"
                if removal[1] > 0
                else "no evidence",
            }
        )
    return rows


def _triple(name: str, v: tuple[float, float, float]) -> dict:
    return {name: v[0], f"{name}_lo": v[1], f"{name}_hi": v[2]}


def probe_label(arm: str, task: str, seed: int) -> str:
    """Returns a probe model's name: 'top[mmlu]' (seed 0), 'top[mmlu]#1', 'random#1', 'half#3'."""
    if task:
        return f"{arm}[{task}]" + (f"#{seed}" if seed else "")
    return f"{arm}#{seed}"


def spearman_rows(pred: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Returns, per column (query), the Spearman correlation of pred and actual across rows (models)."""
    rp = pd.DataFrame(pred).rank().to_numpy()
    ra = pd.DataFrame(actual).rank().to_numpy()
    rp, ra = rp - rp.mean(0), ra - ra.mean(0)
    den = np.sqrt((rp**2).sum(0) * (ra**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rp * ra).sum(0) / den, np.nan)


def lds(
    pred_loss: np.ndarray, actual_loss: np.ndarray, n_boot: int = N_BOOT, seed: int = 0
) -> tuple[float, float, float]:
    """Returns the linear datamodeling score (mean over queries of the Spearman across models) and its interval.

    `pred_loss`, `actual_loss`: (models, queries); queries with a constant prediction or loss are left out.
    """
    per_query = spearman_rows(pred_loss, actual_loss)
    ok = per_query[np.isfinite(per_query)]
    if len(ok) == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    reps = ok[rng.integers(0, len(ok), size=(n_boot, len(ok)))].mean(1)
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return float(ok.mean()), float(lo), float(hi)


def plot_validation(rows: list[dict], path) -> None:
    """Saves per task the three differences (gold NLL, with 95% intervals): top, bottom and removal vs random."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [
        ("top_minus_random_nll", "top - random"),
        ("bottom_minus_random_nll", "bottom - random"),
        ("removal_top_minus_random_nll", "remove top - remove random"),
    ]
    fig, ax = plt.subplots(figsize=(9, 0.6 + 0.55 * len(rows) * len(names)))
    y, ticks = 0, []
    for r in rows:
        for (key, title), color in zip(names, ("tab:blue", "tab:orange", "tab:green")):
            m, lo, hi = r[key], r[f"{key}_lo"], r[f"{key}_hi"]
            ax.errorbar(m, y, xerr=[[m - lo], [hi - m]], fmt="o", capsize=3, color=color)
            ticks.append((y, f"{r['task']}: {title}"))
            y += 1
        y += 0.5
    ax.axvline(0, color="grey", linewidth=1)
    ax.set_yticks([t for t, _ in ticks], [s for _, s in ticks], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("difference in gold NLL on the task's scored items (lower: the subset helps t)", fontsize=9)
    ax.set_title("Does influence predict what helps each task? (paired bootstrap, 95%)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
