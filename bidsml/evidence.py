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

from bidsml.experiment import MACRO, WORST


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


def _diff(table: pd.DataFrame, bench: str, method: str, baseline: str) -> tuple[float, float, float]:
    r = table[(table["metric"] == "nll") & (table["benchmark"] == bench) & (table["method"] == method)]
    if r.empty or f"diff_vs_{baseline}" not in r or pd.isna(r.iloc[0][f"diff_vs_{baseline}"]):
        return (float("nan"),) * 3
    r = r.iloc[0]
    return float(r[f"diff_vs_{baseline}"]), float(r[f"lo_vs_{baseline}"]), float(r[f"hi_vs_{baseline}"])


def gate(table: pd.DataFrame, oracle: str, random: str) -> dict:
    """Returns the validity gate on the macro-average NLL: oracle - base and oracle - random (each with its
    interval) and whether both intervals lie below 0."""
    vs_base = _diff(table, MACRO, oracle, "base")
    vs_random = _diff(table, MACRO, oracle, random)
    passed = bool(vs_base[2] < 0 and vs_random[2] < 0)
    return {"oracle_minus_base": vs_base, "oracle_minus_random": vs_random, "passed": passed}


def headline(table: pd.DataFrame, summary: pd.DataFrame, budget: float, label) -> dict:
    """Returns the headline figures at one budget (`label(method, budget)` names a selection)."""
    out: dict = {}

    def put(key: str, value: tuple[float, float, float]) -> None:
        out[key], out[f"{key}_lo"], out[f"{key}_hi"] = (round(v, 5) for v in value)

    put("oracle_minus_base_nll", _diff(table, MACRO, label("oracle", budget), "base"))
    put("oracle_minus_random_nll", _diff(table, MACRO, label("oracle", budget), label("random", budget)))
    put("less_minus_random_nll", _diff(table, MACRO, label("less", budget), label("random", budget)))
    put("bids_minus_random_nll", _diff(table, MACRO, label("bids", budget), label("random", budget)))
    put("bids_minus_less_worst_nll", _diff(table, WORST, label("bids", budget), label("less", budget)))
    at = summary[summary["budget"] == budget].set_index("method")
    for m in ("less", "bids", "random"):
        out[f"planted_share_{m}"] = round(float(at.loc[m, "planted_share"]), 4) if m in at.index else None
    out["planted_base_rate"] = round(float(at["base_rate"].iloc[0]), 4) if len(at) else None
    return out
