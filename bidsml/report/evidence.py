"""The evidence experiment's own measures (a pool with planted in-distribution rows per target).

- Retrieval, before any fine-tuning: per selection and target, the share of the selection that is the target's
  planted rows, next to their base rate in the pool (what random selection gets in expectation), and how evenly a
  selection covers the targets (the balance BIDS claims).
- The validity gate: the oracle arm (every planted row, padded with random rows) must beat the base model and
  random on held-out target NLL with paired-bootstrap intervals excluding 0; otherwise selection cannot matter in
  this setup and no method comparison is read.
- The headline figures (the last line of results/evidence-cpu.json).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from bidsml.report.experiment import MACRO, WORST


def retrieval_table(pool_planted: list[str | None], selections: list[dict]) -> pd.DataFrame:
    """Returns one row per (selection, seed, target): planted rows selected, their share of the selection, the
    base rate, the lift (share / base rate) and recall (the share of the target's planted rows selected).

    `selections`: {"selection": label, "method", "budget", "seed", "planted_for": [planted_for of each selected row]}.
    """
    n = len(pool_planted)
    planted = Counter(p for p in pool_planted if p)
    out = []
    for s in selections:
        got = Counter(p for p in s["planted_for"] if p)
        k = len(s["planted_for"])
        for t in sorted(planted):
            base = planted[t] / n
            share = got.get(t, 0) / k
            out.append(
                {
                    "selection": s["selection"],
                    "method": s["method"],
                    "budget": s["budget"],
                    "seed": s["seed"],
                    "target": t,
                    "k": k,
                    "planted_selected": got.get(t, 0),
                    "planted_in_pool": planted[t],
                    "share": share,
                    "base_rate": base,
                    "lift": share / base,
                    "recall": got.get(t, 0) / planted[t],
                }
            )
    return pd.DataFrame(out)


def retrieval_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Returns one row per selection (mean over seeds): the planted share summed over targets, its base rate, the
    mean lift, and coverage evenness (the lowest target's share over the mean target's share; 1 = even)."""
    per_seed = table.groupby(["selection", "method", "budget", "seed"]).agg(
        planted_share=("share", "sum"),
        base_rate=("base_rate", "sum"),
        mean_lift=("lift", "mean"),
        min_share=("share", "min"),
        mean_share=("share", "mean"),
    )
    per_seed["evenness"] = np.where(per_seed["mean_share"] > 0, per_seed["min_share"] / per_seed["mean_share"], 0.0)
    return (
        per_seed.drop(columns=["min_share", "mean_share"])
        .groupby(["selection", "method", "budget"])
        .mean()
        .reset_index()
        .sort_values(["budget", "planted_share"], ascending=[True, False])
    )


def _diff(
    table: pd.DataFrame, bench: str, method: str, baseline: str, metric: str = "nll"
) -> tuple[float, float, float]:
    r = table[(table["metric"] == metric) & (table["benchmark"] == bench) & (table["method"] == method)]
    if r.empty or f"diff_vs_{baseline}" not in r or pd.isna(r.iloc[0][f"diff_vs_{baseline}"]):
        return (float("nan"),) * 3
    r = r.iloc[0]
    return float(r[f"diff_vs_{baseline}"]), float(r[f"lo_vs_{baseline}"]), float(r[f"hi_vs_{baseline}"])


def gate(table: pd.DataFrame, oracle: str, random: str, metric: str = "nll") -> dict:
    """Returns the validity gate on the macro-average of a lower-is-better metric (gold NLL or bits per byte):
    oracle - base and oracle - random (each with its interval) and whether both intervals lie below 0."""
    vs_base = _diff(table, MACRO, oracle, "base", metric)
    vs_random = _diff(table, MACRO, oracle, random, metric)
    passed = bool(vs_base[2] < 0 and vs_random[2] < 0)
    return {"oracle_minus_base": vs_base, "oracle_minus_random": vs_random, "passed": passed}


def headline(table: pd.DataFrame, summary: pd.DataFrame, budget: float, label, metric: str = "nll") -> dict:
    """Returns the headline figures at one budget (`label(method, budget)` names a selection): macro-average
    differences of `metric` with their intervals (keys end in the metric), and every arm's planted share."""
    out: dict = {}

    def put(key: str, value: tuple[float, float, float]) -> None:
        out[key], out[f"{key}_lo"], out[f"{key}_hi"] = (round(v, 5) for v in value)

    def diff(a: str, b: str, bench: str = MACRO) -> tuple[float, float, float]:
        return _diff(
            table, bench, label(a, budget) if a != "base" else a, label(b, budget) if b != "base" else b, metric
        )

    put(f"oracle_minus_base_{metric}", diff("oracle", "base"))
    for a, b in [
        ("oracle", "random"),
        ("less", "random"),
        ("bids", "random"),
        ("bm25", "random"),
        ("bids", "bm25"),
        ("bids", "rds-plus"),
        ("bids", "oracle"),
        ("bids", "less"),
    ]:
        put(f"{a}_minus_{b}_{metric}".replace("-", "_"), diff(a, b))
    put(f"bids_minus_less_worst_{metric}", diff("bids", "less", WORST))
    at = summary[summary["budget"] == budget].set_index("method")
    for m in sorted(set(at.index) | {"less", "bids", "random"}):
        out[f"planted_share_{m}"] = round(float(at.loc[m, "planted_share"]), 4) if m in at.index else None
    out["planted_base_rate"] = round(float(at["base_rate"].iloc[0]), 4) if len(at) else None
    return out


def holm(p: list[float]) -> list[float]:
    """Returns Holm's step-down adjusted p-values (same order as `p`): the i-th smallest is multiplied by
    (m - i) and made monotone, capped at 1."""
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def bootstrap_p(diffs: np.ndarray) -> float:
    """Returns the two-sided bootstrap p-value of a difference being 0: twice the smaller tail share of the
    replicates at or beyond 0, with the (count + 1) / (B + 1) correction so it is never 0."""
    b = len(diffs)
    tail = min(int((diffs <= 0).sum()), int((diffs >= 0).sum()))
    return min(1.0, 2 * (tail + 1) / (b + 1))


def primary_comparisons(rows: pd.DataFrame, pairs, metric: str, summaries, budget: float, label, seed: int = 0):
    """Returns one dict per (comparison, summary), in the recipe's order: the estimate, its 95% hierarchical-
    bootstrap interval, the per-seed differences, the bootstrap p-value and the Holm-adjusted p across all of them.

    `pairs`: (method, baseline) names; `label(method, budget)` names a selection ("base" stays "base").
    """
    from bidsml.report.experiment import bootstrap_means, item_matrix, point_means

    name = {m: m if m == "base" else label(m, budget) for pair in pairs for m in pair}
    arms = list(dict.fromkeys(name.values()))
    mats = item_matrix(rows, metric, arms)
    reps = bootstrap_means(mats, arms, metric)
    means = point_means(mats, arms, metric)
    per_seed = _per_seed_means(mats, arms, metric)
    out = []
    for method, baseline in pairs:
        a, b = name[method], name[baseline]
        for summary in summaries:
            d = reps[summary][a] - reps[summary][b]
            out.append(
                {
                    "comparison": f"{method} - {baseline}",
                    "metric": f"{metric} {summary}",
                    "estimate": round(means[summary][a] - means[summary][b], 5),
                    "lo": round(float(np.percentile(d, 2.5)), 5),
                    "hi": round(float(np.percentile(d, 97.5)), 5),
                    "per_seed": [round(x - y, 5) for x, y in zip(per_seed[summary][a], per_seed[summary][b])],
                    "p": round(bootstrap_p(d), 5),
                }
            )
    for r, adj in zip(out, holm([r["p"] for r in out])):
        r["holm_p"] = round(adj, 5)
    return out


def _per_seed_means(mats, arms, metric: str) -> dict[str, dict[str, list[float]]]:
    """Returns {macro/worst: {arm: [value in each seed]}} (each seed's per-benchmark means, then over benchmarks)."""
    from bidsml.report.experiment import MACRO, WORST, _worst

    benches = sorted(mats)
    by_bench = {arm: np.array([np.nanmean(mats[b][arm], axis=1) for b in benches]) for arm in arms}  # (B, S)
    return {
        MACRO: {arm: v.mean(axis=0).tolist() for arm, v in by_bench.items()},
        WORST: {arm: _worst(metric)(v, axis=0).tolist() for arm, v in by_bench.items()},
    }


def above_chance(rows: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> dict[str, dict]:
    """Returns, per multiple-choice benchmark of the base model's rows: its accuracy, the chance rate (mean of
    1 / choices) and the 95% item-bootstrap interval of accuracy - chance."""
    base = rows[(rows["method"] == "base") & rows["n_choices"].notna() & (rows["n_choices"] > 0)]
    base = base.drop_duplicates("id")
    rng = np.random.default_rng(seed)
    out = {}
    for bench, g in base.groupby("benchmark", sort=True):
        acc = g["score"].to_numpy(float)
        excess = acc - 1.0 / g["n_choices"].to_numpy(float)
        draws = rng.integers(0, len(g), size=(n_boot, len(g)))
        boot = excess[draws].mean(axis=1)
        out[bench] = {
            "accuracy": round(float(acc.mean()), 4),
            "chance": round(float((1.0 / g["n_choices"]).mean()), 4),
            "lo": round(float(np.percentile(boot, 2.5)), 4),
            "hi": round(float(np.percentile(boot, 97.5)), 4),
            "n": int(len(g)),
        }
    return out
