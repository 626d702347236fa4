"""Influence fidelity: how well the projected influence ranks pool examples compared with the exact one.

The projected influence is a sketch: each cosine carries an error of about
1/sqrt(k). When the exact cosines vary across pool examples by less than
that, rankings are mostly projection noise. The LoRA gradient is small enough
to hold for a sample of pool rows, so the exact checkpoint-weighted cosine
(no projection) is computed for a seeded sample and every validation column,
and compared with the stored projected scores by Spearman rank correlation:
per task (the task's mean over its validation columns, the quantity LESS
ranks by) and per column.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from bidsml.data.examples import Tokenized
from bidsml.gradients.features import CheckpointState, compute_features_checkpoints, lora_linears
from bidsml.gradients.projection import ExactProjector

FIDELITY_OK = 0.9  # below this a warning names the fix
FIX = "raise features.proj_dim (the sketch error is ~1/sqrt(k)), the LoRA rank, or the sequence length"


def exact_influence(
    model,
    train: list[Tokenized],
    val: list[Tokenized],
    checkpoints: Sequence[CheckpointState],
    weights: Sequence[float],
    pad_id: int,
    max_tokens: int,
    precision: str = "float32",
    block_rows: int = 64,
) -> np.ndarray:
    """Returns the exact (unprojected) checkpoint-weighted cosine (len(train), len(val)) as float64.

    Train rows use each checkpoint's Adam transform, validation rows the plain
    gradient, as in the projected features; train rows go in blocks so at
    most `block_rows` full gradients are held at once.
    """
    exact = ExactProjector({n: tuple(m.weight.shape) for n, m in lora_linears(model)})
    plain = [CheckpointState(c.weights, None) for c in checkpoints]
    vfeats = [
        f.double() for f, _ in compute_features_checkpoints(model, val, exact, pad_id, plain, max_tokens, precision)
    ]
    out = np.zeros((len(train), len(val)))
    for start in range(0, len(train), block_rows):
        block = train[start : start + block_rows]
        tf = compute_features_checkpoints(model, block, exact, pad_id, checkpoints, max_tokens, precision)
        for w, (f, _), v in zip(weights, tf, vfeats):
            out[start : start + len(block)] += w * (f.double() @ v.T).numpy()
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Returns the Spearman rank correlation of two vectors (average ranks for ties); nan if one is constant."""
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def fidelity_table(projected: np.ndarray, exact: np.ndarray, tasks: Sequence[str]) -> list[dict]:
    """Returns one row per task: Spearman of projected vs exact task-mean influence over the sampled rows.

    Also the median per-column Spearman, the spread of the exact scores across
    rows (std) and the mean absolute error of the projection, and an overall
    row (`all`: the worst task's correlation, the median column's).
    """
    tasks = np.asarray(tasks)
    rows = []
    for task in sorted(set(tasks.tolist())):
        cols = np.flatnonzero(tasks == task)
        p, e = projected[:, cols].mean(1), exact[:, cols].mean(1)
        rows.append(
            {
                "task": task,
                "n_rows": int(projected.shape[0]),
                "n_columns": len(cols),
                "spearman": spearman(p, e),
                "column_spearman_median": float(np.nanmedian([spearman(projected[:, j], exact[:, j]) for j in cols])),
                "exact_std": float(e.std()),
                "abs_error": float(np.abs(p - e).mean()),
            }
        )
    rows.append(
        {
            "task": "all",
            "n_rows": int(projected.shape[0]),
            "n_columns": int(projected.shape[1]),
            "spearman": float(np.nanmin([r["spearman"] for r in rows])),
            "column_spearman_median": float(
                np.nanmedian([spearman(projected[:, j], exact[:, j]) for j in range(projected.shape[1])])
            ),
            "exact_std": float(exact.mean(1).std()),
            "abs_error": float(np.abs(projected - exact).mean()),
        }
    )
    return rows


def task_fidelity_table(
    tasks: Sequence[str], exact: np.ndarray, projected: np.ndarray, columns: Sequence[int] | None = None
) -> list[dict]:
    """Returns one row per task from task-mean influence (rows x tasks, the projection step's measurement):
    Spearman of projected vs exact, the spread of the exact scores (std), the mean absolute error, and `all` (the
    worst task's correlation). `columns`: each task's number of validation columns."""
    rows = [
        {
            "task": t,
            "n_rows": int(exact.shape[0]),
            "n_columns": int(columns[i]) if columns is not None else None,
            "spearman": spearman(projected[:, i], exact[:, i]),
            "exact_std": float(exact[:, i].std()),
            "abs_error": float(np.abs(projected[:, i] - exact[:, i]).mean()),
        }
        for i, t in enumerate(tasks)
    ]
    rows.append(
        {
            "task": "all",
            "n_rows": int(exact.shape[0]),
            "n_columns": int(sum(columns)) if columns is not None else None,
            "spearman": float(np.nanmin([r["spearman"] for r in rows])),
            "exact_std": float(exact.mean(1).std()),
            "abs_error": float(np.abs(projected - exact).mean()),
        }
    )
    return rows


def fidelity_warnings(table: list[dict], proj_dim: int) -> list[str]:
    """Returns a warning per task whose projected ranking correlates below FIDELITY_OK with the exact one."""
    return [
        f"influence fidelity for {r['task']!r} is {r['spearman']:.2f} (Spearman, projected vs exact, "
        f"{r['n_rows']} pool rows, k={proj_dim}) < {FIDELITY_OK}: rankings are partly projection noise; {FIX}"
        for r in table
        if r["task"] != "all" and not (r["spearman"] >= FIDELITY_OK)
    ]


FIDELITY_SEED = 0  # the pool rows of the fidelity checks: a seeded sample, the same for every run of a pool


def fidelity_sample(n_pool: int, n_rows: int) -> np.ndarray:
    """Returns the sorted pool rows of the fidelity checks (the projection choice and the diagnostics share them)."""
    n = min(n_rows, n_pool)
    return np.sort(np.random.default_rng(FIDELITY_SEED).choice(n_pool, n, replace=False))
