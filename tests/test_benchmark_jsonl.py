"""A user's own target from JSONL: validation examples, scored items (MC, exact match, NLL), clear errors."""

import json
import math
from pathlib import Path

import pytest

from bidsml.evaluation.benchmarks import benchmark_for
from bidsml.config import TargetTask, load_recipe
from bidsml.errors import DataError
from bidsml.evaluation.aggregate import summarize
from bidsml.evaluation.harness import evaluate_benchmark_items
from bidsml.model import load_base_model
from bidsml.evaluation.sandbox import Limits
from tests.conftest import TINY

ROOT = Path(__file__).parents[1]
RECIPE = ROOT / "recipes" / "custom-target.yaml"


def _target(tmp_path, val, items, **kw) -> TargetTask:
    vp, ip = tmp_path / "val.jsonl", tmp_path / "items.jsonl"
    vp.write_text("".join(json.dumps(r) + "\n" if not isinstance(r, str) else r + "\n" for r in val))
    ip.write_text("".join(json.dumps(r) + "\n" if not isinstance(r, str) else r + "\n" for r in items))
    return TargetTask(task="legal", kind="jsonl", capability="law", validation_path=str(vp), items_path=str(ip), **kw)


def _chat(i, q, a, **extra):
    return {"id": str(i), "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}], **extra}


def test_example_recipe_target_gives_validation_and_three_kinds_of_items():
    recipe = load_recipe(RECIPE)
    bench = benchmark_for(recipe.target("unit_conversion"))
    val = bench.validation()
    assert len(val) == 16 and {e.task for e in val} == {"unit_conversion"} and {e.capability for e in val} == {"math"}
    assert {e.subtask for e in val} >= {"hours", "metres"}
    items = bench.items()
    assert len(items) == 24 and {it.benchmark for it in items} == {"unit_conversion"}
    by_metric = {m: [it for it in items if it.metric == m] for m in ("accuracy", "exact_match", "gold_nll")}
    assert all(len(v) == 8 for v in by_metric.values())
    mc = by_metric["accuracy"][0]
    assert mc.choices == ["A", "B", "C", "D"] and mc.messages[-1]["content"].count("\nA. ") == 1
    assert by_metric["exact_match"][0].max_new_tokens == 8 and by_metric["exact_match"][0].answers


def test_jsonl_items_are_scored_with_the_models_chat_template(tmp_path, tokenizer):
    target = _target(
        tmp_path,
        [_chat("v1", "Is a verbal contract binding?", "Often, yes.")],
        [
            _chat("mc", "Which court is highest?", "Supreme", choices=["District", "Supreme"], gold=1),
            _chat("em", "Say yes.", "yes", answers=["yes"]),
            _chat("nll", "Define tort.", "A civil wrong."),
        ],
    )
    items = benchmark_for(target).items()
    model = load_base_model(TINY)
    rows = evaluate_benchmark_items(model, tokenizer, items, 4, 4, 256, 4, Limits(timeout_s=5, cpu_s=5, memory_mb=512))
    by_id = {r["id"]: r for r in rows}
    assert by_id["legal/mc"]["metric"] == "accuracy" and by_id["legal/mc"]["score"] in (0.0, 1.0)
    assert by_id["legal/em"]["metric"] == "exact_match" and by_id["legal/em"]["output"] is not None
    assert math.isnan(by_id["legal/nll"]["score"]) and by_id["legal/nll"]["metric"] == "gold_nll"
    assert all(r["nll"] > 0 and r["capability"] == "law" for r in rows)
    table = {r["name"]: r for r in summarize(rows) if r["level"] == "benchmark"}
    assert table["legal"]["n"] == 3 and table["legal"]["nll"] > 0


@pytest.mark.parametrize(
    "line,message",
    [
        ("{not json", r"items\.jsonl:2: not valid JSON"),
        (json.dumps({"id": "x", "messages": []}), r"items\.jsonl:2: field 'messages'"),
        (json.dumps(_chat("x", "q", "a", choices=["only"], gold=0)), r"items\.jsonl:2: field 'choices'"),
        (json.dumps(_chat("x", "q", "a", choices=["a", "b"], gold=5)), r"items\.jsonl:2: field 'gold'"),
        (json.dumps(_chat("x", "q", "a", answers="a")), r"items\.jsonl:2: field 'answers'"),
        (
            json.dumps(
                {"id": "x", "messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]}
            ),
            r"items\.jsonl:2: field 'messages': the last message must be the assistant",
        ),
    ],
)
def test_bad_records_name_file_line_and_field(tmp_path, line, message):
    target = _target(tmp_path, [_chat("v", "q", "a")], [_chat("ok", "q", "a"), line])
    with pytest.raises(DataError, match=message):
        benchmark_for(target).items()


def test_missing_settings_and_files_are_named(tmp_path):
    with pytest.raises(DataError, match="set `capability`"):
        benchmark_for(TargetTask(task="t", kind="jsonl", validation_path="a", items_path="b"))
    t = TargetTask(task="t", kind="jsonl", capability="c", validation_path=str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match=r"validation_path .*nope\.jsonl does not exist"):
        benchmark_for(t).validation()
    with pytest.raises(DataError, match="set `items_path`"):
        benchmark_for(t).items()


def test_the_data_step_takes_validation_examples_from_the_users_file(tmp_path):
    from flows.runner import run_step
    from tasks.registry import STEPS, plan

    recipe = load_recipe(RECIPE).with_overrides({"run_root": str(tmp_path / "runs")})
    ref = run_step(STEPS["data"], recipe, {})
    val = [json.loads(x) for x in (ref.path / "validation.jsonl").read_text().splitlines()]
    assert sum(v["task"] == "unit_conversion" for v in val) == 4 and sum(v["task"] == "mmlu" for v in val) == 2
    # the file's content is part of the data identity: editing it gives a new artifact
    before = plan(STEPS["data"], recipe, {}).identity
    vfile = tmp_path / "val.jsonl"
    vfile.write_text(Path(ROOT / "recipes/data/units_validation.jsonl").read_text().replace("is", "equals"))
    t = recipe.data.targets[1].model_copy(update={"validation_path": str(vfile)})
    edited = recipe.model_copy(update={"data": recipe.data.model_copy(update={"targets": (recipe.data.targets[0], t)})})
    assert plan(STEPS["data"], edited, {}).identity != before
