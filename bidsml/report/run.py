"""The run report: evaluation table, selection composition, PNG charts, as markdown."""

from __future__ import annotations

import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from bidsml.selection import selection_label


def evaluation_frame(tables: list[dict]) -> pd.DataFrame:
    """Returns one row per (model, summary row) from evaluation summaries {"model", "tasks": [...]}."""
    rows = [{"model": t["model"], **r} for t in tables for r in t["tasks"]]
    return pd.DataFrame(rows)


def plot_evaluation(df: pd.DataFrame, path: Path) -> Path:
    """Saves grouped bars of each benchmark's standard metric and gold NLL (plus capability and overall
    rows) per model; returns the path."""
    df = df[df["level"] != "task"]
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.5))
    for ax, metric in zip(axes, ["score", "nll"]):
        piv = df.pivot_table(index="name", columns="model", values=metric, aggfunc="first", sort=False)
        piv = piv.dropna(how="all")
        if piv.empty:
            ax.set_axis_off()
            continue
        piv.plot.bar(ax=ax, rot=35)
        ax.set_xlabel("")
        ax.set_title(
            {
                "score": "standard metric: accuracy / exact match / pass@1 (higher is better)",
                "nll": "gold-answer NLL (lower is better)",
            }[metric],
            fontsize=9,
        )
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_composition(selections: list[dict], path: Path) -> Path:
    """Saves stacked bars of each selection's composition by source; returns the path."""
    df = pd.DataFrame({selection_label(s["method"], s["budget"]): s["by_source"] for s in selections}).fillna(0).T
    fig, ax = plt.subplots(figsize=(8, 4))
    df.plot.bar(stacked=True, ax=ax, rot=0)
    ax.set_ylabel("selected examples")
    ax.set_title("selection composition by source")
    ax.legend(fontsize=7, bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _task_first(df: pd.DataFrame) -> pd.DataFrame:
    return df[["task", *[c for c in df.columns if c != "task"]]] if "task" in df.columns else df


def markdown_table(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def evaluation_pivot(
    df: pd.DataFrame, levels: tuple[str, ...] = ("benchmark", "capability", "overall")
) -> pd.DataFrame:
    """Returns a (row name, metric) x model table of 'score / nll' for the given summary levels."""
    df = df[df["level"].isin(levels)].copy()
    df["cell"] = [f"{_fmt(a)} / {_fmt(n)}" for a, n in zip(df["score"], df["nll"])]
    df["metric"] = [m if lv == "benchmark" else "" for m, lv in zip(df["metric"], df["level"])]
    piv = df.pivot_table(index=["name", "metric"], columns="model", values="cell", aggfunc="first", sort=False)
    return piv.reset_index()


def contamination_frame(evaluation: dict) -> pd.DataFrame:
    """Returns per benchmark: scored items, items sharing an n-gram with the pool, and example pairs."""
    c = evaluation.get("contamination") or {"benchmarks": {}}
    return pd.DataFrame(
        [
            {
                "benchmark": b,
                "limit": (evaluation.get("limits") or {}).get(b),
                "items": r["n_items"],
                f"overlapping ({c.get('ngram')}-gram)": r["n_overlapping"],
                "examples": ", ".join(f"{p['item']}~{p['pool']}" for p in r["pairs"][:3]),
            }
            for b, r in c["benchmarks"].items()
        ]
    )


def composition_frame(selections: list[dict]) -> pd.DataFrame:
    """Returns one row per selection: k, counts by source (src:), by most-influenced task (top:),
    and the subset's mean normalised influence per task (z:)."""
    src = pd.DataFrame([s["by_source"] for s in selections]).fillna(0).astype(int).sort_index(axis=1)
    task = pd.DataFrame([s["by_top_task"] for s in selections]).fillna(0).astype(int).sort_index(axis=1)
    head = pd.DataFrame(
        {
            "selection": [selection_label(s["method"], s["budget"]) for s in selections],
            "k": [s["k"] for s in selections],
        }
    )
    z = pd.DataFrame([s["mean_normalized_influence"] for s in selections]).sort_index(axis=1)
    return pd.concat([head, src.add_prefix("src:"), task.add_prefix("top:"), z.add_prefix("z:")], axis=1)


def write_report(
    out: Path,
    title: str,
    facts: dict,
    eval_tables: list[dict],
    selections: list[dict],
    subsets: dict[str, str],
    steps: list[dict],
) -> Path:
    """Writes report.md, evaluation.csv and PNG charts into `out`; returns the report path.

    `facts`: what the run's steps give the report (each step's `report` hook, tasks/): `pool` (the data's counts),
    `task_stats`, `plot`, `fidelity`, `fidelity_warnings` (diagnostics), `proj_dim`, `fidelity_s` (projection).
    """
    out.mkdir(parents=True, exist_ok=True)
    data_summary = facts.get("pool") or {}
    diagnostics = facts if "task_stats" in facts else None
    if diagnostics:  # the plot lives in the immutable diagnostics artifact; the report gets a copy
        shutil.copyfile(diagnostics["plot"], out / Path(diagnostics["plot"]).name)
        diagnostics = {**diagnostics, "plot": Path(diagnostics["plot"]).name}
    ev = evaluation_frame(eval_tables)
    ev.to_csv(out / "evaluation.csv", index=False)
    if any(t.get("lm_eval_table") for t in eval_tables):
        lm_eval_frame(eval_tables).to_csv(out / "lm_eval.csv", index=False)
    plot_evaluation(ev, out / "evaluation.png")
    plot_composition(selections, out / "composition.png")
    lines = [
        f"# {title}",
        "",
        f"Pool: {data_summary.get('pool_out')} examples kept of {data_summary.get('pool_in')} "
        f"({data_summary.get('n_rejected', 0)} rejected, {data_summary.get('pool_truncated', 0)} truncated); "
        f"{data_summary.get('n_val')} validation examples (dev / few-shot material of the targets).",
        "",
        "## Evaluation (standard metric / gold-answer NLL)",
        "",
        "Per benchmark its standard metric (MMLU, ARC: accuracy; GSM8K, BBH-derived: exact match; HumanEval, "
        "MBPP: pass@1), per capability the mean of its benchmarks, then the macro-average and the worst "
        "benchmark. Per-subject rows are in `evaluation.csv`.",
        "",
        markdown_table(evaluation_pivot(ev)),
        "",
        "![evaluation](evaluation.png)",
        "",
        *_evaluation_notes(eval_tables),
        "## Selections (composition by source and by most-influenced task)",
        "",
        markdown_table(composition_frame(selections)),
        "",
        "![composition](composition.png)",
        "",
        *(
            [
                "## Influence per task (raw vs normalised)",
                "",
                markdown_table(_task_first(pd.DataFrame(diagnostics["task_stats"]))),
                "",
                f"![influence distributions]({diagnostics['plot']})",
                "",
            ]
            if diagnostics
            else []
        ),
        *(_fidelity_lines(diagnostics) if diagnostics and diagnostics.get("fidelity") else []),
        "## Subsets (JSONL, input format)",
        "",
        *[f"- {name}: `{path}`" for name, path in subsets.items()],
        "",
        "## Steps: computed or cached",
        "",
        "A cached step took only its lookup in this run; `build (s)` is the time its artifact took when it was "
        "computed.",
        "",
        markdown_table(pd.DataFrame(steps)) if steps else "",
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def _fidelity_lines(diagnostics: dict) -> list[str]:
    table = pd.DataFrame(diagnostics["fidelity"])
    n = int(table["n_rows"].iloc[0])
    return [
        "## Influence fidelity (projected vs exact)",
        "",
        f"Spearman correlation, per task, of the projected influence (k={diagnostics.get('proj_dim')}) with the "
        f"exact unprojected cosine, on {n} sampled pool rows at the first warmup checkpoint (the task's mean over "
        "its validation columns; measured once, by the projection step"
        + (f", in {diagnostics['fidelity_s']} s" if diagnostics.get("fidelity_s") else "")
        + "). Below 0.9, rankings are partly projection noise; `exact_std` is the spread the ranking has to "
        "resolve.",
        "",
        markdown_table(table.round(4)),
        "",
        *[f"> **Warning:** {w}" for w in diagnostics.get("fidelity_warnings", [])],
        "",
    ]


def _evaluation_notes(eval_tables: list[dict]) -> list[str]:
    base = eval_tables[0] if eval_tables else {}
    lines = []
    if base.get("contamination"):
        lines += [
            "### Decontamination: scored items sharing a word n-gram with the pool",
            "",
            markdown_table(contamination_frame(base)),
            "",
        ]
    bbh = base.get("tasks_per_benchmark", {}).get("bbh")
    if bbh:
        lines += [f"BBH-derived tasks ({len(bbh)}): {', '.join(bbh)}.", ""]
    return lines + lm_eval_lines(eval_tables)


def lm_eval_frame(eval_tables: list[dict]) -> pd.DataFrame:
    """Returns lm-eval's own aggregate metrics, one row per (task, metric, filter) and a column per model."""
    rows = [{"model": t["model"], **r} for t in eval_tables for r in t.get("lm_eval_table") or []]
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    piv = df.pivot_table(index=["task", "metric", "filter", "n_shot", "n"], columns="model", values="value",
                         aggfunc="first", sort=False)
    return piv.reset_index()


def lm_eval_lines(eval_tables: list[dict]) -> list[str]:
    """Returns the report's lm-eval section: who scored each benchmark, and lm-eval's own aggregate table."""
    base = next((t for t in eval_tables if t.get("backend") == "lm-eval"), None)
    if base is None:
        return []
    version = (base.get("lm_eval") or {}).get("version", "?")
    table = lm_eval_frame(eval_tables)
    return [
        f"### Scored with lm-evaluation-harness {version}",
        "",
        "Who scored each benchmark (the tables above name the metric as lm-eval does; `harness` per item in "
        "the evaluation artifact):",
        "",
        *[f"- {name}: {who}" for name, who in sorted((base.get("harness") or {}).items())],
        "",
        "lm-eval's own aggregates (its `results`, per task; also in `lm_eval.csv`):",
        "",
        markdown_table(table) if not table.empty else "(none)",
        "",
    ]


def plot_lineage(records: list[dict], path: Path) -> None:
    """Draws lineage records (artifacts, inputs -> outputs) left to right in topological layers, as a PNG.

    Each node is one artifact: its step, method@budget or model where it has
    one, and the first digits of its content digest.
    """
    import networkx as nx

    g = nx.DiGraph()
    for r in records:
        p = r.get("params") or {}
        what = f"{p['method']}@{float(p.get('budget')):g}" if "method" in p else p.get("model", "")
        g.add_node(r["identity"], label=f"{r['step']}\n{what}\n{r['kind']} {r['digest'][:8]}".replace("\n\n", "\n"))
    for r in records:
        for i in r["inputs"]:
            if i["identity"] in g:
                g.add_edge(i["identity"], r["identity"])
    for layer, nodes in enumerate(nx.topological_generations(g)):
        for n in sorted(nodes, key=lambda n: g.nodes[n]["label"]):
            g.nodes[n]["layer"] = layer
    pos = nx.multipartite_layout(g, subset_key="layer", align="vertical", scale=1.0)
    n_layers = 1 + max((d["layer"] for _, d in g.nodes(data=True)), default=0)
    tallest = max((sum(1 for _, d in g.nodes(data=True) if d["layer"] == k) for k in range(n_layers)), default=1)
    fig, ax = plt.subplots(figsize=(max(6.0, 2.3 * n_layers), max(3.0, 1.0 * tallest + 1)))
    nx.draw_networkx_edges(
        g,
        pos,
        ax=ax,
        arrows=True,
        arrowstyle="-|>",
        arrowsize=12,
        edge_color="#888",
        node_size=3000,
        min_source_margin=30,
        min_target_margin=30,
    )
    colors = {
        "data": "#dbeafe",
        "warmup": "#fde68a",
        "features": "#fde68a",
        "influence": "#fecaca",
        "diagnostics": "#fecaca",
        "selection": "#bbf7d0",
        "finetune": "#ddd6fe",
        "evaluation": "#e5e7eb",
        "representations": "#fde68a",
    }
    for n, d in g.nodes(data=True):
        kind = d["label"].rsplit("\n", 1)[-1].split(" ")[0]
        ax.text(
            *pos[n],
            d["label"],
            ha="center",
            va="center",
            fontsize=7,
            bbox={"boxstyle": "round,pad=0.4", "fc": colors.get(kind, "#f3f4f6"), "ec": "#555"},
        )
    ax.set_axis_off()
    ax.set_title("Artifact lineage (inputs -> outputs; kind and content digest)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
