"""Recovering a pruned model (PASER's setting): what pruning cost and what each arm's recovery data won back.

Three kinds of model are evaluated on the same items: the original (unpruned) model, the pruned one (the run's
`base`: every fine-tune starts from it) and each arm's recovered fine-tune (one per seed). Two summaries:

- macro accuracy: the mean over the accuracy benchmarks (the zero-shot suite), as in the experiment's tables;
- perplexity of held-out text (a benchmark whose metric is `perplexity`): exp(total NLL / total tokens), a
  corpus statistic, so its interval comes from resampling passages (weighted by their tokens), not from a mean.

Differences are paired and hierarchical-bootstrapped as everywhere in the experiment (bidsml.report.experiment):
seeds drawn with replacement, then items within each drawn seed, the same draw for both models; 95% percentile
intervals. A model evaluated once (original, pruned) counts the same in every seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from bidsml.report.experiment import MACRO, N_BOOT, WORST, compare_methods, item_matrix

ORIGINAL, PRUNED = "original", "base"  # the run's labels of the unpruned and the pruned model's evaluations


ACCURACY = ("accuracy", "acc", "acc_norm")  # the built-in harness's name, and lm-eval's


def accuracy_benchmarks(items: pd.DataFrame) -> list[str]:
    return sorted(items.loc[items["metric"].isin(ACCURACY), "benchmark"].unique())


def perplexity_benchmarks(items: pd.DataFrame) -> list[str]:
    return sorted(items.loc[items["metric"] == "perplexity", "benchmark"].unique())


def perplexity_differences(
    items: pd.DataFrame, bench: str, methods: Sequence[str], pairs: Sequence[tuple[str, str]], n_boot: int = N_BOOT
) -> tuple[dict[str, float], dict[tuple[str, str], tuple[float, float, float]]]:
    """Returns ({method: perplexity}, {(a, b): (ppl_a - ppl_b, lo, hi)}) on benchmark `bench`.

    Perplexity = exp(sum of the items' NLL x tokens / sum of tokens) over seeds and items; each bootstrap
    replicate reweights seeds and items (the same weights for numerator, denominator and both models).
    """
    rows = items[items["benchmark"] == bench].assign(nll_sum=lambda d: d["nll"] * d["tokens"])
    total = item_matrix(rows, "nll_sum", methods)[bench]
    count = item_matrix(rows, "tokens", methods)[bench]
    n_seeds, n_items = next(iter(total.values())).shape
    rng = np.random.default_rng(0)
    seed_w = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=n_boot).astype(float)
    item_w = rng.multinomial(n_items, np.full(n_items, 1 / n_items), size=(n_boot, n_seeds)).astype(float)
    point, reps = {}, {}
    for m in methods:
        point[m] = float(np.exp(total[m].sum() / count[m].sum()))
        num = np.einsum("rs,si,rsi->r", seed_w, total[m], item_w)
        den = np.einsum("rs,si,rsi->r", seed_w, count[m], item_w)
        reps[m] = np.exp(num / den)
    diffs = {}
    for a, b in pairs:
        d = reps[a] - reps[b]
        diffs[(a, b)] = (point[a] - point[b], float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5)))
    return point, diffs


def recovery_table(items: pd.DataFrame, arms: Sequence[str], random: str | None) -> pd.DataFrame:
    """Returns one row per (summary, model): its value and its difference [95% CI] from the original model, from
    the pruned one, and (arms) from random; summaries: macro accuracy, each accuracy benchmark, perplexity."""
    models = [ORIGINAL, PRUNED, *arms]
    baselines = [ORIGINAL, PRUNED] + ([random] if random else [])
    acc = items[items["benchmark"].isin(accuracy_benchmarks(items))]
    table = compare_methods(acc, models, baselines, ["score"])
    out = []
    for _, r in table.iterrows():
        if r["benchmark"] == WORST:
            continue  # in the experiment's tables
        row = {"summary": "macro accuracy" if r["benchmark"] == MACRO else r["benchmark"], "model": r["method"]}
        row["value"] = r["mean"]
        for b in baselines:
            row |= {f"minus_{b}": r[f"diff_vs_{b}"], f"lo_{b}": r[f"lo_vs_{b}"], f"hi_{b}": r[f"hi_vs_{b}"]}
        out.append(row)
    for bench in perplexity_benchmarks(items):
        pairs = [(m, b) for m in models for b in baselines if m != b]
        point, diffs = perplexity_differences(items, bench, models, pairs)
        for m in models:
            row = {"summary": f"perplexity ({bench})", "model": m, "value": point[m]}
            for b in baselines:
                d = diffs.get((m, b), (np.nan, np.nan, np.nan))
                row |= {f"minus_{b}": d[0], f"lo_{b}": d[1], f"hi_{b}": d[2]}
            out.append(row)
    return pd.DataFrame(out)


def _interval(row: pd.Series, b: str) -> dict:
    return {k: round(float(row[f"{k}_{b}" if k != "estimate" else f"minus_{b}"]), 5) for k in ("estimate", "lo", "hi")}


def recovery_keys(table: pd.DataFrame, arms: Sequence[str], paser: str | None, random: str | None) -> dict:
    """Returns the recovery JSON's headline keys: pruned_minus_base (base = the original model),
    recovered_minus_pruned per arm and paser_minus_random, each for macro accuracy and perplexity."""
    out: dict = {"pruned_minus_base": {}, "recovered_minus_pruned": {arm: {} for arm in arms}}
    if paser and random:
        out["paser_minus_random"] = {}
    for summary, g in table.groupby("summary", sort=False):
        if summary != "macro accuracy" and not summary.startswith("perplexity"):
            continue
        key = "macro_accuracy" if summary == "macro accuracy" else "perplexity"
        by = g.set_index("model")
        out["pruned_minus_base"][key] = _interval(by.loc[PRUNED], ORIGINAL)
        for arm in arms:
            out["recovered_minus_pruned"][arm][key] = _interval(by.loc[arm], PRUNED)
        if paser and random:
            out["paser_minus_random"][key] = _interval(by.loc[paser], random)
    return out


def plot_recovery(table: pd.DataFrame, path) -> None:
    """Draws macro accuracy and perplexity per model (original, pruned, each arm) with the arms' 95% intervals
    of their difference from the pruned model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [s for s in table["summary"].unique() if s == "macro accuracy" or s.startswith("perplexity")]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 3.8), squeeze=False)
    for ax, summary in zip(axes[0], panels):
        g = table[table["summary"] == summary].reset_index(drop=True)
        pruned = float(g.loc[g["model"] == PRUNED, "value"].iloc[0])
        lo = (pruned + g[f"lo_{PRUNED}"]).fillna(g["value"])
        hi = (pruned + g[f"hi_{PRUNED}"]).fillna(g["value"])
        colors = ["#55a868" if m == ORIGINAL else "#c44e52" if m == PRUNED else "#4c72b0" for m in g["model"]]
        ax.barh(g["model"], g["value"], color=colors)
        ax.errorbar(g["value"], g["model"], xerr=[g["value"] - lo, hi - g["value"]], fmt="none", ecolor="k", lw=1)
        ax.axvline(pruned, color="#c44e52", ls="--", lw=1)
        ax.set_title(f"{summary}\nlines: 95% CI of the difference from the pruned model", fontsize=10)
        ax.invert_yaxis()
        if summary == "macro accuracy":
            ax.set_xlim(max(0.0, float(lo.min()) - 0.02), float(hi.max()) + 0.02)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def recovery_markdown(table: pd.DataFrame, prune, scope: str, random: str | None, encoders: Sequence[str]) -> list[str]:
    """Returns the report's recovery section: the headline table (macro accuracy, perplexity), the plot, per
    benchmark; `prune`: the recipe's prune section; `scope`: what the arms are (e.g. "budget 0.1")."""
    from bidsml.report.run import markdown_table

    shown = table.copy()
    for base in (ORIGINAL, PRUNED, random):
        if base is None or f"minus_{base}" not in shown:
            continue
        shown[f"vs {base}"] = [
            ""
            if pd.isna(r[f"minus_{base}"])
            else f"{r[f'minus_{base}']:+.4f} [{r[f'lo_{base}']:+.4f}, {r[f'hi_{base}']:+.4f}]"
            for _, r in shown.iterrows()
        ]
    shown["value"] = shown["value"].map(lambda v: f"{v:.4f}")
    cols = ["summary", "model", "value"] + [c for c in shown.columns if c.startswith("vs ")]
    head = shown["summary"].eq("macro accuracy") | shown["summary"].str.startswith("perplexity")
    return [
        f"## What pruning cost and what recovery won back ({scope})",
        "",
        f"Pruned: {prune.method}, {prune.sparsity:.0%} of each decoder linear's weights (unstructured). `original`: "
        "the unpruned model; `base`: the pruned one, where every fine-tune starts. Macro accuracy: the mean over "
        "the accuracy benchmarks; perplexity: exp(total NLL / total tokens) of held-out text (lower is better). "
        "Differences with paired hierarchical-bootstrap 95% intervals (seeds, then items).",
        "",
        markdown_table(shown[head][cols]),
        "",
        "![recovery](recovery.png)",
        "",
        f"PASER's instruction embeddings: {', '.join(encoders) or 'paser not run'}.",
        "",
        "### Per benchmark",
        "",
        markdown_table(shown[~head][cols]),
        "",
    ]


def append_recovery_section(report: Path, items: pd.DataFrame, arms: list[str], prune, selections: list[dict]) -> None:
    """Writes recovery.csv / .png beside a run's report and appends its recovery section: what pruning cost and
    what each of the run's arms (one seed) won back."""
    table = recovery_table(items, arms, None)
    table.to_csv(report.parent / "recovery.csv", index=False)
    plot_recovery(table, report.parent / "recovery.png")
    encoders = sorted({m["embeddings"] for m in selections if m.get("method") == "paser" and m.get("embeddings")})
    scope = "this run's arms, one seed"
    report.write_text(report.read_text() + "\n" + "\n".join(recovery_markdown(table, prune, scope, None, encoders)))
