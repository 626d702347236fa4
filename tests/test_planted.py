"""Planted sources (the evidence experiment): in-distribution rows for a target, never sharing a 13-gram with a
scored item or a validation example, marked `planted_for`; the oracle selector that takes them all."""

from __future__ import annotations

import numpy as np
import pytest

from bidsml.evaluation.benchmarks import builtin_benchmark
from bidsml.evaluation.benchmarks.contamination import ngrams, overlap_filter
from bidsml.config import parse_recipe
from bidsml.errors import RecipeError
from bidsml.evaluation.items import evaluation_items
from bidsml.data.prepare import load_pool, load_targets
from bidsml.selectors import PoolFields, SelectorInputs, run_selector


def _recipe(pool, methods=("random",)):
    return parse_recipe(
        {
            "name": "planted",
            "model": {"tiny": True},
            "data": {"pool": pool, "targets": [{"task": "gsm8k", "n_val": 4}, {"task": "arc_challenge", "n_val": 4}]},
            "selection": {"methods": list(methods)},
            "evaluation": {"benchmarks": {"gsm8k": 40, "arc_challenge": 30}},
        }
    )


def test_planted_rows_never_overlap_scored_items_or_validation_and_are_marked():
    r = _recipe([{"source": "gsm8k_unscored"}, {"source": "arc_easy", "n": 100}, {"source": "sciq", "n": 20}])
    val, _ = load_targets(r.data, r.sampling_seed)
    items = evaluation_items(r)
    pool, counts = load_pool(r.data, r.sampling_seed, overlap_filter(items, val))
    gsm = counts["gsm8k_unscored"]
    # the 40 scored GSM8K problems are among the unscored source's candidates: every one is removed
    assert gsm["planted_for"] == "gsm8k" and gsm["dropped_overlap"] >= 40 and gsm["taken"] == gsm["available"]
    scored = set()
    for it in items:
        scored |= ngrams(f"{it.question} {it.gold_text}", 13) | ngrams(it.question, 13)
    for ex in val:
        scored |= ngrams(" ".join(m.content for m in ex.messages), 13)
    planted = [e for e in pool if e.planted_for]
    assert {e.planted_for for e in planted} == {"gsm8k", "arc_challenge"}
    assert all(not e.planted_for for e in pool if e.source == "sciq")
    for e in planted:
        assert scored.isdisjoint(ngrams(" ".join(m.content for m in e.messages), 13)), e.id
    # without the filter the scored problems would be there
    raw, _ = load_pool(r.data, r.sampling_seed)
    assert sum(e.planted_for == "gsm8k" for e in raw) == gsm["taken"] + gsm["dropped_overlap"]


def test_oracle_takes_every_planted_row_then_random_and_needs_a_planted_source():
    planted = [None, "gsm8k", None, "mbpp", "gsm8k", None, None, None, None, None]
    x = SelectorInputs(tasks=["t"], pool=PoolFields(sources=["s"] * 10, planted_for=planted))
    rows = run_selector("oracle", x, 6, seed=0)
    assert rows[:3].tolist() == [1, 3, 4] and len(set(rows.tolist())) == 6
    assert all(planted[i] is None for i in rows[3:])
    few = run_selector("oracle", x, 2, seed=0)  # more planted rows than the budget: one per target
    assert sorted(planted[i] for i in few) == ["gsm8k", "mbpp"]
    with pytest.raises(RecipeError, match="'oracle' needs a planted source in data.pool"):
        _recipe([{"source": "sciq", "n": 20}], methods=("oracle",))
    assert _recipe([{"source": "arc_easy", "n": 20}], methods=("oracle",)).selection.methods == ("oracle",)


def test_planted_sources_hold_their_targets_format():
    from bidsml.data.sources import load_source

    arc, _ = load_source("arc_easy")
    assert len(arc) > 500 and arc[0].choices and arc[0].messages[-1].content[:2] in {f"{c}." for c in "ABCDE"}
    gsm, _ = load_source("gsm8k_unscored")
    assert (
        all(e.planted_for == "gsm8k" for e in gsm)
        and np.mean(["So the answer is" in e.messages[-1].content for e in gsm]) > 0.9
    )


def test_the_data_step_plants_reports_and_its_identity_follows_the_scored_items(tmp_path):
    import json

    from flows.runner import run_step
    from tasks.registry import STEPS, plan

    r = _recipe([{"source": "gsm8k_unscored", "n": 30}, {"source": "sciq", "n": 20}])
    r = r.with_overrides({"run_root": str(tmp_path / "runs")})
    ref = run_step(STEPS["data"], r, {})
    report = json.loads((ref.path / "report.json").read_text())
    assert report["planted_for"] == {"gsm8k": 30} and report["sources"]["gsm8k_unscored"]["dropped_overlap"] >= 40
    pool = [json.loads(x) for x in (ref.path / "pool.jsonl").read_text().splitlines()]
    assert sum(p.get("planted_for") == "gsm8k" for p in pool) == 30
    # which items are scored decides what may be planted: evaluation limits are then part of the data's identity
    more = r.with_overrides({"evaluation.benchmarks": {"gsm8k": 60, "arc_challenge": 30}})
    assert plan(STEPS["data"], more, {}).identity != plan(STEPS["data"], r, {}).identity
    # without a planted source they are not (changing what is scored leaves the pool and everything after it)
    plain = _recipe([{"source": "sciq", "n": 20}])
    plain_more = plain.with_overrides({"evaluation.benchmarks": {"gsm8k": 60}})
    assert plan(STEPS["data"], plain_more, {}).identity == plan(STEPS["data"], plain, {}).identity


def test_mmlu_planted_rows_exclude_every_scored_item_by_id_even_when_too_short_for_13_grams():
    r = parse_recipe(
        {
            "name": "planted-mmlu",
            "model": {"tiny": True},
            "data": {"pool": [{"source": "mmlu_unscored"}], "targets": [{"task": "mmlu", "n_val": 4}]},
            "evaluation": {"benchmarks": {"mmlu": 228}},
        }
    )
    val, _ = load_targets(r.data, r.sampling_seed)
    items = evaluation_items(r)
    pool, counts = load_pool(r.data, r.sampling_seed, overlap_filter(items, val))
    origins = {e.id.split("/", 1)[1] for e in pool}
    assert len(items) == 228 and not origins & {it.id for it in items}
    assert counts["mmlu_unscored"]["dropped_overlap"] >= 228 and all(e.planted_for == "mmlu" for e in pool)


def test_bbh_planted_rows_are_the_subtasks_test_pairs_in_the_shots_format():
    from bidsml.evaluation.benchmarks.bbh import bbh_validation
    from bidsml.data.sources import load_source

    rows, _ = load_source("bbh_unscored")
    shots = bbh_validation()
    assert len(rows) > 50_000 and all(e.planted_for == "bbh" for e in rows[:100])
    assert {e.subtask for e in rows} == {e.subtask for e in shots}  # every subtask, no shot among them
    assert not {e.messages[0].content for e in shots} & {e.messages[0].content for e in rows[:2000]}


def test_humaneval_planted_rows_are_mbpp_problems_in_humaneval_form_disjoint_from_mbpp_planted():
    from bidsml.data.sources.planted import _mbpp_humaneval, _mbpp_unscored

    he, mb = _mbpp_humaneval(), _mbpp_unscored()
    assert len(he) >= 180 and all(e.planted_for == "humaneval" for e in he)
    # the two halves never hold the same MBPP problem
    assert not {e.id.split("/", 1)[1] for e in he} & {e.id.split("/", 1)[1] for e in mb}
    shot = builtin_benchmark("humaneval").validation()[0]
    for e in he:
        q, a = e.messages[0].content, e.messages[1].content
        head = "Complete the Python function.\n```python\n"  # HumanEval's own question form
        assert shot.messages[0].content.startswith(head) and q.startswith(head) and "def " in q
        prompt = q.removeprefix("Complete the Python function.\n```python\n").removesuffix("```")
        assert a.startswith(f"```python\n{prompt}") and a.endswith("```") and '"""' in prompt and ">>> " in prompt
        compile(a.removeprefix("```python\n").removesuffix("```"), e.id, "exec")  # the whole function parses
