"""A pool that grows: with a kept warmup, a grown pool's features and influence copy the rows computed before and
compute only the new ones; the selections equal a from-scratch build's (tiny model, whole pipeline runs)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).parents[1]


def _rows(n, start=0, changed=()):
    out = []
    for i in range(start, start + n):
        q = f"Question {i}: what is {i} plus {i * 3}?" + (" (edited)" if i in changed else "")
        out.append(
            {
                "id": f"r{i}",
                "source": "mine",
                "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": f"It is {4 * i}."}],
            }
        )
    return out


def _pool(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _recipe(tmp_path, pool: str, **over):
    from bidsml.config import load_recipe

    return load_recipe(REPO / "recipes" / "tiny.yaml").with_overrides(
        {
            "run_root": str(tmp_path / "runs"),
            "data.pool": [{"source": "jsonl", "path": pool}],
            "features.proj_dim": 1024,  # one k for every pool (auto could choose another)
            "features.chunk_rows": 16,
            "selection.methods": ["bids", "less"],
            "selection.budgets": [10],
            "evaluation.benchmarks": {"mmlu": 2},
            **over,
        }
    )


def _store(ref, split="train", c=0):
    from storage.gradients import read_features

    return read_features(Path(ref["uri"]), split, c).astype(np.float32)


def _selection(record, label):
    return pd.read_parquet(Path(record["refs"]["selection"][label]["uri"]) / "selection.parquet")["id"].tolist()


def test_a_grown_pool_copies_old_rows_and_selects_as_a_from_scratch_build(tmp_path, prefect_harness):
    from flows.pipeline import pipeline
    from storage.runs import list_runs

    first = pipeline(_recipe(tmp_path, _pool(tmp_path / "a.jsonl", _rows(40))))
    run_a = first["run_id"]
    grown = _pool(tmp_path / "b.jsonl", _rows(40) + _rows(4, start=100))  # +10%
    report = Path(pipeline(_recipe(tmp_path, grown, **{"warmup.from_run": run_a}))["report"]).read_text()
    pipeline(_recipe(tmp_path, grown, **{"warmup.from_run": run_a, "features.reuse": False}))
    a, inc, scratch = list_runs(Path(tmp_path / "runs"))
    assert inc["refs"]["warmup"]["main"]["digest"] == a["refs"]["warmup"]["main"]["digest"]  # the kept warmup
    fa, fi, fs = (r["refs"]["features"]["main"] for r in (a, inc, scratch))
    assert fi["meta"]["rows_reused"] == 40 + fa["meta"]["n_val"] and fi["meta"]["rows_computed"] == 4
    assert fs["meta"]["rows_reused"] == 0 and fi["identity"] != fs["identity"]  # the copy is named in the identity
    ia = _store(fa)
    for c in range(fa["meta"]["checkpoints"]):
        assert np.array_equal(_store(fi, c=c)[:40], _store(fa, c=c))  # copied rows: bit for bit
        assert np.array_equal(_store(fi, "val", c), _store(fa, "val", c))
    # the bound batching alone makes: the same 40 rows computed in A's batches and in the grown pool's batches
    bound = np.abs(_store(fs)[:40] - ia).max()
    assert np.abs(_store(fi) - _store(fs)).max() <= max(bound, 1e-3)
    ii = inc["refs"]["influence"]["main"]
    assert ii["meta"]["rows_reused"] == 40 and ii["meta"]["reused_from"] == a["refs"]["influence"]["main"]["identity"]
    for label in ("bids@10", "less@10"):
        assert _selection(inc, label) == _selection(scratch, label), label
    # said to the user: the report's step table names the kept warmup and the copied rows
    assert f"kept from run {run_a}" in report
    assert f"{40 + fa['meta']['n_val']} rows copied from {fa['identity'][:12]}" in report
    # rerun: everything cached (the reuse is part of the identity, found again)
    pipeline(_recipe(tmp_path, grown, **{"warmup.from_run": run_a}))
    again = list_runs(Path(tmp_path / "runs"))[-1]["refs"]
    assert again["features"]["main"]["digest"] == fi["digest"] and again["influence"]["main"]["digest"] == ii["digest"]


def test_rows_whose_content_changed_are_recomputed_and_only_those(tmp_path, prefect_harness):
    from flows.pipeline import pipeline
    from storage.row_reuse import load_row_sources
    from storage.runs import list_runs

    run_a = pipeline(_recipe(tmp_path, _pool(tmp_path / "a.jsonl", _rows(40))))["run_id"]
    edited = _pool(tmp_path / "c.jsonl", _rows(40, changed={3, 17, 30}))
    pipeline(_recipe(tmp_path, edited, **{"warmup.from_run": run_a}))
    rec = list_runs(Path(tmp_path / "runs"))[-1]
    f = rec["refs"]["features"]["main"]
    assert f["meta"]["rows_computed"] == 3
    copied = set(load_row_sources(Path(f["uri"])).lookup("train"))
    assert set(range(40)) - copied == {3, 17, 30}


def test_a_kept_warmup_must_fit_the_recipe(tmp_path, prefect_harness):
    from bidsml.errors import RecipeError
    from flows.pipeline import pipeline

    run_a = pipeline(_recipe(tmp_path, _pool(tmp_path / "a.jsonl", _rows(40))))["run_id"]
    with pytest.raises(RecipeError, match="warmup.from_run: run .*'s warmup was trained with another lora section"):
        pipeline(_recipe(tmp_path, _pool(tmp_path / "a.jsonl", _rows(40)), **{"warmup.from_run": run_a, "lora.r": 2}))
    with pytest.raises(RecipeError, match="warmup.from_run: no run 'nope'"):
        pipeline(_recipe(tmp_path, _pool(tmp_path / "a.jsonl", _rows(40)), **{"warmup.from_run": "nope"}))
