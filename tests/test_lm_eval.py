"""The lm-eval backend: lm-eval's stock tasks over the installed data, offline; agreement with the built-in harness;
users' own tasks; a task that would download fails before any step."""

import json
import os
from pathlib import Path

import pytest

from bidsml.config import load_recipe
from bidsml.errors import BidsError, RecipeError
from bidsml.evaluation.benchmarks import builtin_benchmark, sample_items
from bidsml.evaluation.harness import evaluate_benchmark_items
from bidsml.evaluation.lm_eval_backend import LmEvalRun, add_items, agreement, evaluate_lm_eval
from bidsml.evaluation.lm_eval_tasks import check_lm_eval
from bidsml.model import load_base_model
from tests.conftest import TINY

ROOT = Path(__file__).parents[1]
# what every test here scores: a few items of each benchmark lm-eval reads offline (formulations as lm-eval has them)
# (MMLU's `rc` items share their ids with its `mc` items: scored on their own, below)
SHIPPED = [("mmlu", "mc", 3), ("arc_challenge", "rc0", 3), ("gsm8k", None, 2), ("bbh", None, 3)]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test here may reach the hub: the datasets and hub clients refuse to."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def model():
    return load_base_model(TINY)


@pytest.fixture(scope="module")
def scored(model, tokenizer):
    """Returns (items, lm-eval rows, lm-eval aggregates, built-in rows) of SHIPPED on the tiny model."""
    return _score(model, tokenizer, SHIPPED)


def _score(model, tokenizer, spec):
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    run, items = LmEvalRun(num_fewshot={"mmlu": 5}), []
    for name, form, n in spec:
        bench = builtin_benchmark(name)
        its = sample_items(bench.items(form), n, 0)
        items += its
        assert add_items(run, its, bench.formulation(form))
    rows, aggregate = evaluate_lm_eval(model, tokenizer, run, 4, 2048, 0)
    builtin = evaluate_benchmark_items(model, tokenizer, items, 4, 4, 2048, 8)
    return items, rows, aggregate, builtin


def test_each_shipped_benchmark_scores_exactly_the_builtin_items(scored):
    items, rows, aggregate, _ = scored
    assert sorted(r["id"] for r in rows) == sorted(it.id for it in items)
    tasks = {r["lm_eval_task"] for r in rows}
    assert "arc_challenge" in tasks and "gsm8k_cot" in tasks
    assert any(t.startswith("mmlu_") for t in tasks) and any(t.startswith("bbh_fewshot_") for t in tasks)
    metric = {r["lm_eval_task"]: r["metric"] for r in rows}
    assert metric["arc_challenge"] == "acc_norm" and metric["gsm8k_cot"] == "exact_match (strict-match)"
    # lm-eval's own aggregate equals the mean of its per-item scores
    for task, res in aggregate["results"].items():
        mine = [r for r in rows if r["lm_eval_task"] == task]
        key = {"arc_challenge": "acc_norm,none", "gsm8k_cot": "exact_match,strict-match"}.get(task)
        if key:
            assert res[key] == pytest.approx(sum(r["score"] for r in mine) / len(mine))
    # generation tasks keep the model's text; scored by the filter's extraction
    gen = [r for r in rows if r["lm_eval_task"] == "gsm8k_cot"]
    assert all(isinstance(r["output"], str) for r in gen)
    assert all(json.loads(r["metrics"]).keys() >= {"exact_match,strict-match", "exact_match,flexible-extract"} for r in gen)


def test_on_byte_identical_prompts_lm_eval_and_the_builtin_harness_agree(scored):
    _, rows, _, builtin = scored
    agree = agreement(builtin, rows)
    # MMLU 5-shot letters and ARC's zero-shot cloze are the same text in both harnesses
    for name in ("mmlu", "arc_challenge"):
        assert agree[name]["items"] >= 3
    mc = [r for r in rows if r["lm_eval_task"].startswith("mmlu_") and not r["lm_eval_task"].endswith("continuation")]
    assert mc and all(r["prompt_sha"] == next(b for b in builtin if b["id"] == r["id"])["prompt_sha"] for r in mc)
    arc = agree["arc_challenge"]
    assert arc["identical_prompts"] == arc["items"] and arc["max_loglik_diff"] < 1e-3
    assert agree["mmlu"]["identical_prompts"] >= 3 and agree["mmlu"]["max_loglik_diff"] < 1e-3
    # letters: the same argmax; every row's pred is the option lm-eval's own metric scored
    gold = {b["id"]: b for b in builtin}
    for r in mc:
        assert r["pred"] == gold[r["id"]]["pred"]
    items = {it.id: it for it in scored[0]}
    for r in rows:
        if r["choice_logprobs"] is not None and r["id"] in items and items[r["id"]].gold is not None:
            assert r["score"] == float(r["pred"] == items[r["id"]].gold), r["id"]


def test_mmlu_cloze_runs_as_lm_evals_continuation_tasks_with_the_same_text(model, tokenizer):
    items, rows, _, builtin = _score(model, tokenizer, [("mmlu", "rc", 2)])
    assert all(r["lm_eval_task"].endswith("_continuation") and r["metric"] == "acc_norm" for r in rows)
    agree = agreement(builtin, rows, items)["mmlu"]
    assert agree["identical_prompts"] == 2 and agree["max_loglik_diff"] < 1e-3
    assert agree["pred_equal_same_norm"] == 1.0  # normalised alike, lm-eval's log-likelihoods pick the same option
    gold = {it.id: it.gold for it in items}
    assert all(r["score"] == float(r["pred"] == gold[r["id"]]) for r in rows)  # pred: lm-eval's acc_norm choice


def test_a_benchmark_lm_eval_cannot_read_offline_stays_builtin_and_says_why():
    from bidsml.evaluation.lm_eval_backend import plan_lm_eval

    recipe = _recipe({"humaneval": 1, "gsm8k": 1})
    items = sample_items(builtin_benchmark("humaneval").items(), 1, 0) + sample_items(
        builtin_benchmark("gsm8k").items(), 1, 0
    )
    run, left, harness = plan_lm_eval(recipe.evaluation, items, lambda b: builtin_benchmark(b).formulation())
    assert [it.benchmark for it in left] == ["humaneval"] and "sandbox" in harness["humaneval"]
    assert harness["gsm8k"] == "lm-eval: gsm8k_cot" and [t.name for t in run.shipped] == ["gsm8k_cot"]


def _recipe(benchmarks: dict, **evaluation) -> object:
    rec = load_recipe(ROOT / "recipes" / "tiny.yaml")
    return rec.with_overrides(
        {
            "evaluation.benchmarks": benchmarks,
            "evaluation.backend": "lm-eval",
            "evaluation.formulation": {"arc_challenge": "rc0"} if "arc_challenge" in benchmarks else {},
            **{f"evaluation.lm_eval.{k}": v for k, v in evaluation.items()},
        }
    )


def _user_task(folder: Path, name: str, **data) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {
        "task": name,
        "output_type": "multiple_choice",
        "test_split": "train",
        "doc_to_text": "Q: {{q}}\nA:",
        "doc_to_choice": "{{options}}",
        "doc_to_target": "{{gold}}",
        "metric_list": [{"metric": "acc"}],
        **data,
    }
    (folder / f"{name}.yaml").write_text(json.dumps(cfg))  # YAML is a superset of JSON


def test_a_users_task_reading_local_files_is_scored_and_one_that_would_download_fails_first(tmp_path, model, tokenizer):
    from bidsml.evaluation.lm_eval_backend import plan_lm_eval

    docs = tmp_path / "docs.jsonl"
    docs.write_text(
        "\n".join(json.dumps({"q": f"What is {i} plus one?", "options": [str(i + 1), str(i + 7)], "gold": 0}) for i in range(5))
    )
    tasks = tmp_path / "tasks"
    _user_task(tasks, "my_sums", dataset_path="json", dataset_kwargs={"data_files": {"train": str(docs)}})
    _user_task(tasks, "hub_task", dataset_path="someone/some_dataset")  # beside it: refused when named (below)
    recipe = _recipe({"gsm8k": 1}, tasks={"my_sums": 3}, include_path=str(tasks))
    check_lm_eval(recipe)  # reads local files: passes
    run, _, harness = plan_lm_eval(recipe.evaluation, [], lambda b: None)
    assert harness["my_sums"] == "lm-eval: my_sums"
    rows, aggregate = evaluate_lm_eval(model, tokenizer, run, 4, 512, 0)
    assert [r["id"] for r in rows] == ["my_sums/0", "my_sums/1", "my_sums/2"]  # its first 3 docs (the limit)
    assert all(r["benchmark"] == "my_sums" and r["metric"] == "acc" and r["n_choices"] == 2 for r in rows)
    assert aggregate["results"]["my_sums"]["acc,none"] == pytest.approx(sum(r["score"] for r in rows) / 3)

    bad = _recipe({"gsm8k": 1}, tasks={"hub_task": None}, include_path=str(tasks))
    with pytest.raises(RecipeError, match=r"task 'hub_task' would download its data: dataset_path 'someone/some_data"):
        check_lm_eval(bad)
    # the CLI stops before any step, with the same message and no traceback
    from typer.testing import CliRunner

    from flows.cli import app

    import yaml

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad.with_overrides({"run_root": str(tmp_path / "runs")}).model_dump(mode="json")))
    res = CliRunner().invoke(app, ["run", "--recipe", str(path)])
    assert res.exit_code == 2 and "would download its data" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.json"))  # nothing ran
    with pytest.raises(RecipeError, match="lm-eval has no task, group or tag 'no_such_task'"):
        check_lm_eval(_recipe({"gsm8k": 1}, tasks={"no_such_task": None}, include_path=str(tasks)))


def test_the_shipped_tasks_index_finds_each_built_in_task_by_the_file_of_lm_evals_whole_catalogue():
    from bidsml.evaluation.lm_eval_tasks import offline_tasks, shipped_task_manager, task_manager

    shipped, catalogue = shipped_task_manager().task_index, task_manager().task_index
    assert all(catalogue[name].yaml_path == e.yaml_path for name, e in shipped.items())  # the same files, and
    for name, form in [("mmlu", "mc"), ("mmlu", "rc"), ("arc_challenge", "rc0"), ("gsm8k", None), ("bbh", None)]:
        items = builtin_benchmark(name).items(form)
        one_per_task = sample_items(items, len({it.task for it in items}), 0)
        names = {t.name for t in offline_tasks(name, one_per_task, builtin_benchmark(name).formulation(form))}
        assert names and names <= set(shipped), (name, form, sorted(names - set(shipped))[:5])  # every task in it


def test_settings_that_lm_eval_cannot_honour_fail_at_load_or_preflight():
    rec = load_recipe(ROOT / "recipes" / "tiny.yaml")
    with pytest.raises(BidsError, match="evaluation.backend is 'builtin': set backend: lm-eval"):
        rec.with_overrides({"evaluation.lm_eval.tasks": {"arc_easy": 5}})
    with pytest.raises(BidsError, match="num_fewshot: .piqa. is neither"):
        rec.with_overrides({"evaluation.backend": "lm-eval", "evaluation.lm_eval.num_fewshot": {"piqa": 3}})
    mc = rec.with_overrides({"evaluation.backend": "lm-eval"})  # tiny.yaml scores arc_challenge in `mc`
    with pytest.raises(RecipeError, match="set evaluation.formulation.arc_challenge: rc0"):
        check_lm_eval(mc)
