"""A pool that grows: with a kept warmup, a grown pool's features and influence copy the rows computed before and
compute only the new ones; the selections equal a from-scratch build's (tiny model; the pool A and the grown pool
run as `bidsflow run` does, the comparisons through the step flows on the same run root)."""

import json
from pathlib import Path

import numpy as np
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


def _recipe(root: Path, pool: str, **over):
    from bidsml.config import load_recipe

    return load_recipe(REPO / "recipes" / "tiny.yaml").with_overrides(
        {
            "run_root": str(root / "runs"),
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

    return read_features(Path(ref.path), split, c).astype(np.float32)


def _ref(record, kind, label="main"):
    from storage.refs import ArtifactRef

    return ArtifactRef.model_validate(record["refs"][kind][label])


def _features_and_influence(recipe, data, warm):
    from flows.step_flows import STEP_FLOWS as F

    proj = F["projection"](recipe, inputs={"data": data, "warmup": warm})
    feats = F["features"](recipe, inputs={"data": data, "warmup": warm, "projection": proj})
    return feats, F["influence"](recipe, inputs={"data": data, "warmup": warm, "features": feats})


def _selected(recipe, data, infl, method):
    from flows.step_flows import STEP_FLOWS as F
    from storage.selections import load_selection_table

    ref = F["selection"](recipe, inputs={"data": data, "influence": infl}, params={"method": method, "budget": 10})
    return load_selection_table(ref)["train_idx"].tolist()


@pytest.fixture(scope="module")
def grown(tmp_path_factory, prefect_harness):
    """Pool A (40 rows) run whole; then A + 4 new rows (+10%) with A's warmup kept, run whole."""
    from flows.pipeline import pipeline
    from storage.runs import list_runs

    root = tmp_path_factory.mktemp("grow")
    run_a = pipeline(_recipe(root, _pool(root / "a.jsonl", _rows(40))))["run_id"]
    out = pipeline(
        _recipe(root, _pool(root / "b.jsonl", _rows(40) + _rows(4, start=100)), **{"warmup.from_run": run_a})
    )
    a, inc = list_runs(root / "runs")
    return root, run_a, a, inc, Path(out["report"]).read_text()


def test_a_grown_pool_copies_old_rows_and_selects_as_a_from_scratch_build(grown):
    root, run_a, a, inc, report = grown
    assert _ref(inc, "warmup").digest == _ref(a, "warmup").digest  # the kept warmup
    fa, fi, ii = _ref(a, "features"), _ref(inc, "features"), _ref(inc, "influence")
    assert fi.meta["rows_reused"] == 40 + fa.meta["n_val"] and fi.meta["rows_computed"] == 4
    assert ii.meta["rows_reused"] == 40 and ii.meta["reused_from"] == _ref(a, "influence").identity
    for c in range(fa.meta["checkpoints"]):
        assert np.array_equal(_store(fi, c=c)[:40], _store(fa, c=c))  # copied rows: bit for bit
        assert np.array_equal(_store(fi, "val", c), _store(fa, "val", c))
    # from scratch on the same warmup: every row computed
    recipe = _recipe(root, str(root / "b.jsonl"), **{"warmup.from_run": run_a, "features.reuse": False})
    data = _ref(inc, "data")
    fs, is_ = _features_and_influence(recipe, data, _ref(a, "warmup"))
    assert fs.meta["rows_reused"] == 0 and fs.identity != fi.identity  # the copy is named in the identity
    # the bound batching alone makes: A's 40 rows computed in A's batches and in the grown pool's
    bound = np.abs(_store(fs)[:40] - _store(fa)).max()
    assert np.abs(_store(fi) - _store(fs)).max() <= max(bound, 1e-3)
    for method in ("bids", "less"):
        assert _selected(recipe, data, ii, method) == _selected(recipe, data, is_, method), method
    # said to the user: the report's step table names the kept warmup and the copied rows
    assert f"kept from run {run_a}" in report
    assert f"{40 + fa.meta['n_val']} rows copied from {fa.identity[:12]}" in report
    # a rerun with reuse finds the same sources: the same artifacts, from the cache
    again, again_i = _features_and_influence(recipe.with_overrides({"features.reuse": True}), data, _ref(a, "warmup"))
    assert (again.digest, again_i.digest) == (fi.digest, ii.digest)


def test_rows_whose_content_changed_are_recomputed_and_only_those(grown):
    from flows.step_flows import STEP_FLOWS as F
    from storage.row_reuse import load_row_sources

    root, run_a, a, _, _ = grown
    recipe = _recipe(root, _pool(root / "c.jsonl", _rows(40, changed={3, 17, 30})), **{"warmup.from_run": run_a})
    feats, _ = _features_and_influence(recipe, F["data"](recipe), _ref(a, "warmup"))
    assert feats.meta["rows_computed"] == 3
    assert set(range(40)) - set(load_row_sources(feats.path).lookup("train")) == {3, 17, 30}


def test_a_kept_warmup_must_fit_the_recipe(grown):
    from bidsml.errors import RecipeError
    from flows.pipeline import pipeline

    root, run_a, *_ = grown
    with pytest.raises(RecipeError, match="warmup.from_run: run .*'s warmup was trained with another lora section"):
        pipeline(_recipe(root, str(root / "a.jsonl"), **{"warmup.from_run": run_a, "lora.r": 2}))
    with pytest.raises(RecipeError, match="warmup.from_run: no run 'nope'"):
        pipeline(_recipe(root, str(root / "a.jsonl"), **{"warmup.from_run": "nope"}))
