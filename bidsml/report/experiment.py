"""Comparing selection methods over seeds: per-benchmark means, macro-average, worst task, paired bootstrap CIs.

Every method is evaluated on the same scored items (the data seed fixes them)
once per seed. A difference "method - baseline" is resampled in pairs by a
hierarchical bootstrap: one replicate draws seeds with replacement, then,
within each drawn seed and per benchmark, items with replacement (a fresh
draw per seed), and applies the same draw to both methods, so item
difficulty cancels in the difference while seed variance (each seed its own
warmup, projection and validation draw) stays in the interval. The macro-average (mean
over benchmarks) and the worst task (the lowest score, the highest NLL) are computed
inside each replicate, so their intervals are exact for those statistics.

Two metrics: `score`, each benchmark's standard metric (accuracy, exact
match, pass@1; higher is better), over the items that have one (decoded
items for generation benchmarks); and `nll`, the gold-answer NLL (lower is
better) over every scored item.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

N_BOOT = 2000
MACRO, WORST = "macro-average", "worst-task"


def item_matrix(rows: pd.DataFrame, metric: str, methods: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
    """Returns {benchmark: {method: (seeds, items) array}} of a metric, items aligned by id across methods.

    `rows` has columns method, seed, benchmark, id and the metric; a method
    evaluated once (the base model) is repeated for every seed. Items with a
    missing value (a generation item that was not decoded) are dropped.
    """
    seeds = sorted(rows.loc[rows["method"].isin(methods) & rows["seed"].notna(), "seed"].unique())
    out: dict[str, dict[str, np.ndarray]] = {}
    for bench, g in rows[rows[metric].notna()].groupby("benchmark", sort=True):
        ids = sorted(set.intersection(*(set(g.loc[g["method"] == m, "id"]) for m in methods)))
        if not ids:
            continue
        out[bench] = {}
        for m in methods:
            gm = g[g["method"] == m]
            table = (
                gm.pivot_table(index="seed", columns="id", values=metric, dropna=False)
                if gm["seed"].notna().any()
                else None
            )
            if table is None:  # evaluated once: the same values for every seed
                one = gm.drop_duplicates("id").set_index("id").loc[ids, metric].to_numpy(float)
                out[bench][m] = np.tile(one, (len(seeds), 1))
            else:
                out[bench][m] = table.reindex(index=seeds, columns=ids).to_numpy(float)
    return out


def _worst(metric: str):
    """Returns the worst-task reduction of a metric: min for scores, max for NLL (lower is better)."""
    return np.max if metric == "nll" else np.min


def bootstrap_means(
    mats: dict[str, dict[str, np.ndarray]],
    methods: Sequence[str],
    metric: str = "score",
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> dict[str, dict[str, np.ndarray]]:
    """Returns {benchmark or macro/worst: {method: (n_boot,) replicate means}} with paired draws across methods."""
    rng = np.random.default_rng(seed)
    benches = sorted(mats)
    n_seeds = next(iter(mats[benches[0]].values())).shape[0]
    seed_w = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=n_boot).astype(float)  # (B, S)
    reps: dict[str, dict[str, np.ndarray]] = {}
    for b in benches:
        n_items = next(iter(mats[b].values())).shape[1]
        # items drawn afresh within each seed: (B, S, I) counts (a seed drawn twice in a replicate keeps one draw,
        # weighted twice: the two-stage bootstrap of nested data)
        item_w = rng.multinomial(n_items, np.full(n_items, 1 / n_items), size=(n_boot, n_seeds)).astype(float)
        reps[b] = {
            m: np.einsum("rs,si,rsi->r", seed_w, np.nan_to_num(mats[b][m]), item_w) / (n_seeds * n_items)
            for m in methods
        }
    reps[MACRO] = {m: np.mean([reps[b][m] for b in benches], axis=0) for m in methods}
    reps[WORST] = {m: _worst(metric)([reps[b][m] for b in benches], axis=0) for m in methods}
    return reps


def point_means(
    mats: dict[str, dict[str, np.ndarray]], methods: Sequence[str], metric: str = "score"
) -> dict[str, dict[str, float]]:
    """Returns {benchmark or macro/worst: {method: mean over seeds and items}}."""
    out = {b: {m: float(np.mean(mats[b][m])) for m in methods} for b in sorted(mats)}
    benches = sorted(mats)
    out[MACRO] = {m: float(np.mean([out[b][m] for b in benches])) for m in methods}
    out[WORST] = {m: float(_worst(metric)([out[b][m] for b in benches])) for m in methods}
    return out


def compare_methods(
    rows: pd.DataFrame,
    methods: Sequence[str],
    baselines: Sequence[str],
    metrics: Sequence[str] = ("score", "nll"),
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> pd.DataFrame:
    """Returns one row per (metric, benchmark, method): its mean and, per baseline, the difference and its 95% CI.

    Columns: metric, benchmark, method, n_items, n_seeds, mean, and per
    baseline `diff_vs_<b>`, `lo_vs_<b>`, `hi_vs_<b>` (percentile interval of
    the paired bootstrap; NaN for the baseline itself).
    """
    out = []
    for metric in metrics:
        mats = item_matrix(rows, metric, methods)
        if not mats:
            continue
        means, reps = point_means(mats, methods, metric), bootstrap_means(mats, methods, metric, n_boot, seed)
        for bench in [*sorted(mats), MACRO, WORST]:
            for m in methods:
                n_items = (
                    sum(v[m].shape[1] for v in mats.values()) if bench in (MACRO, WORST) else mats[bench][m].shape[1]
                )
                row = {
                    "metric": metric,
                    "benchmark": bench,
                    "method": m,
                    "n_items": int(n_items),
                    "n_seeds": int(next(iter(mats.values()))[m].shape[0]),
                    "mean": means[bench][m],
                }
                for b in baselines:
                    if m == b:
                        row |= {f"diff_vs_{b}": np.nan, f"lo_vs_{b}": np.nan, f"hi_vs_{b}": np.nan}
                        continue
                    d = reps[bench][m] - reps[bench][b]
                    row |= {
                        f"diff_vs_{b}": means[bench][m] - means[bench][b],
                        f"lo_vs_{b}": float(np.percentile(d, 2.5)),
                        f"hi_vs_{b}": float(np.percentile(d, 97.5)),
                    }
                out.append(row)
    return pd.DataFrame(out)


def verdict(row: pd.Series, baseline: str, higher_is_better: bool) -> str:
    """Returns 'better', 'worse' or 'no difference' for a row's 95% interval against a baseline."""
    lo, hi = row[f"lo_vs_{baseline}"], row[f"hi_vs_{baseline}"]
    if np.isnan(lo):
        return ""
    if lo > 0:
        return "better" if higher_is_better else "worse"
    if hi < 0:
        return "worse" if higher_is_better else "better"
    return "no difference"


def plot_differences(table: pd.DataFrame, baselines: Sequence[str], path) -> None:
    """Draws every method's difference to each baseline with its 95% interval, one panel per metric x baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(dict.fromkeys(table["metric"]))
    colors = {m: f"C{i}" for i, m in enumerate(dict.fromkeys(table["method"]))}  # one colour per method
    fig, axes = plt.subplots(
        len(metrics),
        len(baselines),
        figsize=(5.5 * len(baselines), 0.35 * table["benchmark"].nunique() * 3 + 1.5),
        squeeze=False,
    )
    for r, metric in enumerate(metrics):
        for c, base in enumerate(baselines):
            ax = axes[r][c]
            t = table[(table["metric"] == metric) & (table["method"] != base)]
            benches = list(dict.fromkeys(t["benchmark"]))
            methods = list(dict.fromkeys(t["method"]))
            for j, m in enumerate(methods):
                tm = t[t["method"] == m].set_index("benchmark").loc[benches]
                y = np.arange(len(benches)) + (j - (len(methods) - 1) / 2) * 0.8 / max(len(methods), 1)
                d = tm[f"diff_vs_{base}"].to_numpy()
                err = np.vstack([d - tm[f"lo_vs_{base}"].to_numpy(), tm[f"hi_vs_{base}"].to_numpy() - d])
                ax.errorbar(d, y, xerr=err, fmt="o", capsize=3, label=m, color=colors[m])
            ax.axvline(0, color="grey", lw=1)
            ax.set_yticks(np.arange(len(benches)), benches)
            ax.invert_yaxis()
            better = "higher is better" if metric == "score" else "lower is better"
            ax.set_title(f"{metric} ({better}): method - {base}, 95% CI", fontsize=9)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
