"""The evaluation artifact: one row per scored item (Parquet) and the summary table (JSON)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from storage.names import EVAL_ITEMS, EVAL_TABLE
from storage.refs import ArtifactRef


def save_evaluation(work: Path, rows: list[dict], summary: dict) -> None:
    """Writes the item rows and the summary (which must hold no timings: the files are the content)."""
    pd.DataFrame(rows).to_parquet(Path(work) / EVAL_ITEMS, index=False)
    (Path(work) / EVAL_TABLE).write_text(json.dumps(summary, indent=1, sort_keys=True))


def load_evaluation_items(ref: ArtifactRef) -> pd.DataFrame:
    return pd.read_parquet(ref.path / EVAL_ITEMS)


def evaluation_exists(root: Path) -> bool:
    return (Path(root) / EVAL_ITEMS).exists() and (Path(root) / EVAL_TABLE).exists()


def lm_eval_results(ref: ArtifactRef) -> list[dict]:
    """Returns lm-eval's own aggregate metrics of an evaluation (one row per task, metric and filter; empty when
    the built-in harness scored everything), as lm-eval names them."""
    summary = json.loads((ref.path / EVAL_TABLE).read_text())
    agg = summary.get("lm_eval") or {}
    rows = []
    for task, res in sorted((agg.get("results") or {}).items()):
        for key, value in sorted(res.items()):
            if "," not in key or "_stderr," in key:
                continue
            metric, filt = key.split(",", 1)
            rows.append(
                {
                    "task": task,
                    "metric": metric,
                    "filter": filt,
                    "value": value,
                    "n": res.get("sample_len"),
                    "n_shot": (agg.get("n-shot") or {}).get(task),
                }
            )
    return rows
