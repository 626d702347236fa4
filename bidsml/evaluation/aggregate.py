"""Aggregation of per-item rows: per task, benchmark, macro-average and worst task (score and gold NLL)."""

from __future__ import annotations

import pandas as pd


def summarize(rows: list[dict]) -> list[dict]:
    """Returns summary rows (level, name, capability, metric, n, score, nll, bpb).

    Levels: `task` (subject / subtask), `benchmark` (its standard metric,
    micro-averaged over its items), `capability` (mean of its benchmarks),
    and `overall`: macro-average over benchmarks and the worst benchmark.
    """
    df = pd.DataFrame(rows)
    out = []
    for (bench, task), g in df.groupby(["benchmark", "task"], sort=True):
        if task != bench:
            out.append(_row("task", f"{bench}/{task}", g))
    bench_rows = []
    for bench, g in df.groupby("benchmark", sort=True):
        bench_rows.append(_row("benchmark", bench, g))
    out += bench_rows
    b = pd.DataFrame(bench_rows)
    for cap, g in b.groupby("capability", sort=True):
        out.append(
            {
                "level": "capability",
                "name": cap,
                "capability": cap,
                "metric": "mean of benchmarks",
                "n": int(g["n"].sum()),
                "score": float(g["score"].mean()),
                "nll": float(g["nll"].mean()),
                "bpb": float(g["bpb"].mean()),
            }
        )
    out.append(
        {
            "level": "overall",
            "name": "macro-average",
            "capability": "all",
            "metric": "mean of benchmarks",
            "n": int(b["n"].sum()),
            "score": float(b["score"].mean()),
            "nll": float(b["nll"].mean()),
            "bpb": float(b["bpb"].mean()),
        }
    )
    worst = b.loc[b["score"].idxmin()]
    out.append(
        {
            "level": "overall",
            "name": "worst-task",
            "capability": worst["capability"],
            "metric": f"min over benchmarks ({worst['name']})",
            "n": int(worst["n"]),
            "score": float(worst["score"]),
            "nll": float(b["nll"].max()),
            "bpb": float(b["bpb"].max()),
        }
    )
    return out


def _row(level: str, name: str, g: pd.DataFrame) -> dict:
    return {
        "level": level,
        "name": name,
        "capability": g["capability"].iloc[0],
        "metric": g["metric"].iloc[0],
        "n": len(g),
        "score": float(g["score"].mean()),
        "nll": float(g["nll"].mean()),
        "bpb": float(g["bpb"].mean()) if "bpb" in g else float("nan"),
    }
