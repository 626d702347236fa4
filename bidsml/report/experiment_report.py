"""The experiment's report (a recipe with `seeds`): its markdown and the files beside it.

- `experiment_report`: the headline table (macro-average and worst task against each baseline), every
  benchmark, the composition per method, the per-seed runs.
- `evidence_section` (a pool with planted rows): the primary comparisons fixed in the recipe, the validity gate,
  retrieval before fine-tuning (evidence.json, retrieval.csv / .png).
- `recovery_section` (a recipe with `prune`): what pruning cost and what each arm won back (recovery.json).
- `tuning_section`: the fine-tuning settings the tuning trials chose.

The figures come from bidsml.report.evidence / .experiment / .recovery; flows/experiment.py runs the seeds and
calls these.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from bidsml.config import Recipe
from bidsml.report.evidence import above_chance, gate, headline, primary_comparisons, retrieval_summary, retrieval_table
from bidsml.report.experiment import MACRO, WORST, verdict
from bidsml.report.run import markdown_table
from bidsml.selection import selection_label

def tuning_section(recipe: Recipe, tuning: pd.DataFrame) -> str:
    return "\n".join(
        [
            f"# Fine-tuning settings: lr {recipe.finetune.lr:g}, {recipe.finetune.epochs} epochs",
            "",
            f"Chosen among {len(tuning)} trials (recipe `tuning`), each a fine-tune on the same {tuning['k'].iloc[0]} "
            "random pool rows scored by the targets' validation NLL (never the scored items): the lowest mean over "
            "targets wins.",
            "",
            markdown_table(tuning.round(5).astype({"lr": str})),  # 1e-4 and 3e-4 stay apart
            "",
            "",
        ]
    )



def evidence_section(
    recipe: Recipe,
    table: pd.DataFrame,
    pool_planted: list,
    picked: list[dict],
    tuning,
    out: Path,
    started: float,
    items: pd.DataFrame | None = None,
    recipe_sha256: str = "",
    seeds_independent: bool = True,
    selections: list[dict] | None = None,
) -> str:
    """Writes evidence.json (the last line: the headline figures), retrieval.csv and retrieval.png; returns the
    report's first section: the primary comparisons fixed in the recipe (`evidence`, with `items` the per-item
    rows), the oracle gate, then retrieval; every other difference in the report is exploratory."""
    retrieval = retrieval_table(pool_planted, picked)
    summary = retrieval_summary(retrieval)
    retrieval.to_csv(out / "retrieval.csv", index=False)
    summary.to_csv(out / "retrieval-summary.csv", index=False)
    _plot_retrieval(summary, out / "retrieval.png")
    ev = recipe.evidence
    metric = ev.metric if ev is not None and ev.metric != "score" else "nll"  # the gate's: lower is better
    lines = [f"# Evidence: {recipe.name}", ""]
    primary = []
    if ev is not None and items is not None:
        primary = primary_comparisons(items, ev.pairs(), ev.metric, ev.summaries, ev.budget, selection_label)
        lines += primary_section(recipe, primary, recipe_sha256, seeds_independent)
    records = []
    for b in recipe.selection.budgets:
        g = gate(table, selection_label("oracle", b), selection_label("random", b), metric)
        h = headline(table, summary, b, selection_label, metric)
        records.append({"budget": b, **h, "gate_passed": g["passed"]})
        ob, orr = g["oracle_minus_base"], g["oracle_minus_random"]
        lines += [
            f"## Validity gate at budget {b}: {'passed' if g['passed'] else 'NOT passed'}",
            "",
            f"Oracle (every planted row, padded with random rows) minus base model, macro-average {METRIC_NAMES[metric]}: "
            f"{ob[0]:+.4f} [{ob[1]:+.4f}, {ob[2]:+.4f}]; minus random: {orr[0]:+.4f} [{orr[1]:+.4f}, {orr[2]:+.4f}]. "
            + (
                "Selection can matter here: the comparisons below are read."
                if g["passed"]
                else "Selection could not matter in this setup: read the comparisons below as no evidence either way."
            ),
            "",
        ]
    first = next((r for r in records if ev is not None and r["budget"] == ev.budget), records[0])
    last = {**first, "wall_s": round(time.time() - started, 1)}
    last["gate_passed"] = all(r["gate_passed"] for r in records)  # at every budget; each budget's own just below
    last["gate_passed_by_budget"] = {str(r["budget"]): r["gate_passed"] for r in records}
    if ev is not None:
        last |= evidence_keys(recipe, primary, items, selections or [], recipe_sha256, seeds_independent)
        for key in ("bm25_minus_random", "bids_minus_bm25", "bids_minus_rds_plus", "bids_minus_oracle"):
            m = f"{key}_{metric}"  # the macro-average of the gate's metric, as {estimate, lo, hi}
            last[key] = {"metric": metric, "estimate": last[m], "lo": last[f"{m}_lo"], "hi": last[f"{m}_hi"]}
    (out / "evidence.json").write_text("".join(json.dumps(r) + "\n" for r in [*records, last] if r is not first))
    lines += [
        "## Retrieval before fine-tuning",
        "",
        "Share of each selection made of planted rows (summed over targets; mean over seeds) against their base "
        "rate in the pool (what random gets in expectation); mean lift over targets (share / base rate); evenness: "
        "the least-covered target's share over the mean target's share (1 = every target equally).",
        "",
        markdown_table(summary.round(4)),
        "",
        "![retrieval](retrieval.png)",
        "",
    ]
    if tuning is not None:
        lines.insert(2, tuning_section(recipe, tuning))
    return "\n".join(lines) + "\n"



def recovery_section(
    recipe: Recipe,
    items: pd.DataFrame,
    selections: list[dict],
    out: Path,
    started: float,
    sha: str,
    seeds_independent: bool,
    planted: bool,
    build_s: float,
) -> str:
    """Writes recovery.csv, recovery.png and recovery.json (its last line: pruned_minus_base, recovered_minus_pruned
    per arm, paser_minus_random, encoder, wall_s, build_s); returns the report's first section: the primary comparisons fixed
    in the recipe (when the evidence section does not already show them), then what pruning cost and what each
    arm's recovery won back (bidsml.report.recovery)."""
    from bidsml.report.recovery import plot_recovery, recovery_keys, recovery_markdown, recovery_table

    b = recipe.evidence.budget if recipe.evidence is not None else recipe.selection.budgets[0]
    arms = [selection_label(m, b) for m in recipe.selection.methods]
    paser = selection_label("paser", b) if "paser" in recipe.selection.methods else None
    random = selection_label("random", b) if "random" in recipe.selection.methods else None
    table = recovery_table(items, arms, random)
    table.to_csv(out / "recovery.csv", index=False)
    plot_recovery(table, out / "recovery.png")
    lines = [f"# Recovery of the pruned model: {recipe.name}", ""]
    primary = []
    if recipe.evidence is not None and not planted:
        ev = recipe.evidence
        primary = primary_comparisons(items, ev.pairs(), ev.metric, ev.summaries, ev.budget, selection_label)
        lines += primary_section(recipe, primary, sha, seeds_independent)
    p = recipe.prune
    encoders = sorted({s["embeddings"] for s in selections if s.get("method") == "paser" and s.get("embeddings")})
    last = {
        "budget": b,
        "prune": p.model_dump(mode="json"),
        **recovery_keys(table, arms, paser, random),
        "primary": [
            {k: r[k] for k in ("comparison", "metric", "estimate", "lo", "hi", "per_seed", "holm_p")} for r in primary
        ],
        "encoder": encoders[0] if len(encoders) == 1 else encoders,
        "seeds": list(recipe.seeds or [recipe.seed]),
        "seeds_independent": seeds_independent,
        "recipe_sha256": sha,
        "wall_s": round(time.time() - started, 1),  # this invocation (cached steps count their lookup only)
        "build_s": build_s,  # building every artifact it used, each once: a run from an empty cache
    }
    (out / "recovery.json").write_text(json.dumps(last) + "\n")
    lines += recovery_markdown(table, p, f"budget {b}", random, encoders)
    return "\n".join(lines) + "\n"



METRIC_NAMES = {"nll": "gold NLL per token", "bpb": "gold bits per byte", "score": "standard metric"}



def primary_section(recipe: Recipe, primary: list[dict], sha: str, seeds_independent: bool) -> list[str]:
    """Returns the report's headline: exactly the recipe's primary comparisons, Holm-adjusted."""
    ev = recipe.evidence
    better = "higher" if ev.metric == "score" else "lower"
    rows = pd.DataFrame(
        [
            {
                "comparison": r["comparison"],
                "metric": r["metric"],
                "estimate [95% CI]": f"{r['estimate']:+.4f} [{r['lo']:+.4f}, {r['hi']:+.4f}]",
                "per seed": ", ".join(f"{v:+.4f}" for v in r["per_seed"]),
                "p": f"{r['p']:.4f}",
                "Holm p": f"{r['holm_p']:.4f}",
                "reading": holm_reading(r, ev.alpha, ev.metric),
            }
            for r in primary
        ]
    )
    seeds = (
        "independent seeds (each its own warmup, projection and validation draw)"
        if seeds_independent
        else ("seeds sharing one warmup, projection and influence (--shared-influence: a quick mode, not evidence)")
    )
    return [
        f"## Primary comparisons (fixed in the recipe before the run), budget {ev.budget}",
        "",
        f"Recipe sha256 `{sha}`. {len(recipe.seeds or [])} {seeds}. Metric: {METRIC_NAMES[ev.metric]} "
        f"({better} is better); hierarchical bootstrap (seeds, then items within seed), 95% percentile intervals; "
        f"bootstrap p-values Holm-adjusted across the {len(primary)} comparisons (family-wise alpha {ev.alpha}). "
        "Everything after this table is exploratory.",
        "",
        markdown_table(rows),
        "",
        *[f"Proxy inputs of `{m}`: {why}." for m, why in PROXIES.items() if m in recipe.selection.methods],
        "",
    ]



def holm_reading(r: dict, alpha: float, metric: str) -> str:
    """Returns 'better', 'worse' or 'no difference' for a primary comparison after Holm's adjustment."""
    if r["holm_p"] >= alpha:
        return "no difference"
    lower_better = metric != "score"
    return "better" if (r["estimate"] < 0) == lower_better else "worse"



PROXIES = {
    "mig": "labels: source + k-means cluster of the embeddings (the paper: InsTag tags); quality: the base model's "
    "mean response log-probability, as a pool percentile (the paper: Deita quality x complexity)",
    "kmq": "quality: the base model's mean response log-probability (the reference: Deita scores)",
}



def evidence_keys(recipe: Recipe, primary, items, selections: list[dict], sha: str, independent: bool) -> dict:
    """Returns the evidence JSON's last-line keys beyond the headline differences: the formulation per benchmark,
    whether seeds were independent, the primary comparisons, kMQ's cluster count, the base model's accuracy
    against chance per multiple-choice benchmark and the recipe's hash."""
    from bidsml.evaluation.benchmarks import benchmark_for
    from bidsml.selectors import selector_options
    from bidsml.selectors.kmq import kmq_cluster_count

    ev = recipe.evidence
    forms = {
        name: benchmark_for(recipe.target(name)).formulation(recipe.evaluation.formulation.get(name))
        for name in recipe.evaluation.benchmarks
    }
    kmq = [s for s in selections if s.get("method") == "kmq" and s.get("budget") == ev.budget]
    opts = selector_options("kmq", recipe.selection.options_of("kmq"))
    return {
        "formulation": forms,
        "seeds_independent": independent,
        "primary": [
            {k: r[k] for k in ("comparison", "metric", "estimate", "lo", "hi", "per_seed", "holm_p")} for r in primary
        ],
        "kmq_k": sorted({kmq_cluster_count(int(s["k"]), opts) for s in kmq}) if kmq else None,
        "encoder": {
            m: sorted({s["embeddings"] for s in selections if s.get("method") == m and s.get("embeddings")})
            for m in ("kmq", "mig")
            if m in recipe.selection.methods
        },
        "proxies": {m: PROXIES[m] for m in PROXIES if m in recipe.selection.methods},
        "accuracy_above_chance_base": above_chance(items) if items is not None and "n_choices" in items else {},
        "recipe_sha256": sha,
    }



def _shown_path(path) -> str:
    """Returns `path` relative to the working directory when under it (as the user typed the run root), else whole."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)



def _plot_retrieval(summary: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = sorted(summary["budget"].unique())
    fig, axes = plt.subplots(1, len(budgets), figsize=(5 * len(budgets), 3.5), squeeze=False)
    for ax, b in zip(axes[0], budgets):
        at = summary[summary["budget"] == b].sort_values("planted_share")
        ax.barh(at["method"], at["planted_share"], color="#4c72b0")
        ax.axvline(at["base_rate"].iloc[0], color="k", ls="--", lw=1, label="base rate")
        ax.set_title(f"budget {b}: planted share of the selection")
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)



def experiment_report(
    recipe: Recipe,
    table: pd.DataFrame,
    comp: pd.DataFrame,
    baselines: list[str],
    seed_runs: dict,
    items,
    seconds,
    shared_influence: bool = False,
) -> str:
    """Returns the experiment's markdown: headline table, every benchmark, composition, per-seed reports."""
    n_items = items[items["method"] == "base"].groupby("benchmark")["id"].nunique().to_dict()
    n_decoded = items[(items["method"] == "base") & items["score"].notna()].groupby("benchmark")["id"].nunique()
    varies = (
        f"random selection, fine-tuning; warmup, features and influence are seed {recipe.seeds[0]}'s in every seed"
        if shared_influence
        else "each seed a whole pipeline: warmup data order and LoRA init, projection seed, validation draw, "
        "selection, fine-tuning"
    )
    lines = [
        f"# Experiment: {recipe.name}",
        "",
        f"Seeds {list(recipe.seeds)} ({varies}); data and scored items from data seed {recipe.sampling_seed}. "
        "Differences are method minus baseline with paired hierarchical-bootstrap "
        "95% intervals (seeds, then items within each seed); `score` is each benchmark's standard metric (higher is "
        "better), `nll` the gold answer's NLL per token and `bpb` its bits per byte (lower is better)."
        + (
            " These differences are exploratory: the claims are the primary comparisons above."
            if recipe.evidence
            else ""
        ),
        "",
        "Scored items per benchmark (gold NLL): "
        + ", ".join(f"{b} {n}" for b, n in sorted(n_items.items()))
        + ". With a standard metric (MC accuracy, or decoded for exact match / pass@1): "
        + ", ".join(f"{b} {int(n)}" for b, n in sorted(n_decoded.items()))
        + ".",
        "",
        "## Headline: macro-average and worst task",
        "",
        markdown_table(_headline(table, baselines)),
        "",
        "![differences](experiment.png)",
        "",
        "## Every benchmark",
        "",
        markdown_table(_rounded(table)),
        "",
        "## Composition per method (mean over seeds)",
        "",
        markdown_table(_composition(comp)),
        "",
        "## Per-seed runs",
        "",
        *[f"- seed {s}: `{_shown_path(r['report'])}`" for s, r in seed_runs.items()],
        "",
        f"Wall time of this invocation (cached steps count their lookup only): {seconds / 60:.1f} min.",
        "",
    ]
    return "\n".join(lines)



def _headline(table: pd.DataFrame, baselines: list[str]) -> pd.DataFrame:
    t = table[table["benchmark"].isin([MACRO, WORST])].copy()
    for b in baselines:
        t[f"vs {b}"] = [
            ""
            if pd.isna(r[f"diff_vs_{b}"])
            else f"{r[f'diff_vs_{b}']:+.4f} [{r[f'lo_vs_{b}']:+.4f}, {r[f'hi_vs_{b}']:+.4f}] "
            f"{verdict(r, b, r['metric'] == 'score')}"
            for _, r in t.iterrows()
        ]
    t["mean"] = t["mean"].map(lambda v: f"{v:.4f}")
    return t[["metric", "benchmark", "method", "mean", *[f"vs {b}" for b in baselines]]]



def _rounded(table: pd.DataFrame) -> pd.DataFrame:
    t = table.drop(columns=["budget"], errors="ignore").copy()
    for c in t.columns:
        if t[c].dtype.kind == "f":
            t[c] = t[c].map(lambda v: "" if pd.isna(v) else f"{v:+.4f}" if "_vs_" in c else f"{v:.4f}")
    return t



def _composition(comp: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in comp.columns if c.startswith(("src:", "top:"))]
    return comp.groupby("selection", sort=True)[cols].mean().round(1).reset_index()
