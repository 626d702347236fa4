"""Recipes: validation errors name the key and value; shipped recipes load."""

import json
from pathlib import Path

import pytest

from bidsml.config import load_recipe, parse_recipe
from bidsml.errors import RecipeError

RECIPES = Path(__file__).parents[1] / "recipes"
BASE = {
    "name": "t",
    "model": {"tiny": True},
    "data": {"pool": [{"source": "sciq", "n": 4}], "targets": [{"task": "mmlu"}]},
}


@pytest.mark.parametrize(
    "name",
    [
        "demo.yaml",
        "smollm2-olmo.yaml",
        "tiny.yaml",
        "experiment-cpu.yaml",
        "experiment-gpu.yaml",
        "evidence-cpu.yaml",
        "evidence-gpu.yaml",
        "custom-target.yaml",
    ],
)
def test_shipped_recipes_are_valid(name):
    import yaml

    r = load_recipe(RECIPES / name)
    raw = yaml.safe_load((RECIPES / name).read_text())
    assert r.name == raw["name"] and [t.task for t in r.data.targets] == [t["task"] for t in raw["data"]["targets"]]


def test_full_recipe_meets_the_gpu_run_spec():
    r = load_recipe(RECIPES / "smollm2-olmo.yaml")
    assert sum(s.n for s in r.data.pool) >= 20_000
    assert r.warmup.epochs == 4 and r.features.proj_dim == "auto"


def test_experiment_recipe_meets_the_experiment_spec():
    """>= 2,000 examples from >= 10 sources, every target with >= 8 validation examples, >= 3 seeds, the methods,
    one 10% budget, >= 200 scored items per benchmark (HumanEval: every item not used for validation)."""
    from bidsml.evaluation.benchmarks import benchmark_for

    r = load_recipe(RECIPES / "experiment-cpu.yaml")
    assert sum(s.n for s in r.data.pool) >= 2000 and len({s.source for s in r.data.pool}) >= 10
    assert {t.task for t in r.data.targets} == {"mmlu", "arc_challenge", "gsm8k", "humaneval", "mbpp", "bbh"}
    assert all(t.n_val >= 8 for t in r.data.targets)
    assert len(r.seeds) >= 3 and {"random", "less", "bids", "sum", "bids-no-norm"} <= set(r.selection.methods)
    assert list(r.selection.budgets) == [0.1]
    for name, limit in r.evaluation.benchmarks.items():
        assert limit >= min(200, len(benchmark_for(r.target(name)).items())), name


def test_unknown_key_is_named():
    with pytest.raises(RecipeError, match=r"lora\.rank = 8: Extra inputs are not permitted"):
        parse_recipe({**BASE, "lora": {"rank": 8}})


def test_bad_value_is_named():
    with pytest.raises(RecipeError, match=r"selection\.methods = .*unknown selector 'bidz'; registered: .*rds-plus"):
        parse_recipe({**BASE, "selection": {"methods": ["bidz"]}})
    with pytest.raises(RecipeError, match=r"warmup\.fraction = 1\.5"):
        parse_recipe({**BASE, "warmup": {"fraction": 1.5}})


def test_file_errors_name_the_file(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("name: [unclosed")
    with pytest.raises(RecipeError, match="r.yaml: not valid YAML"):
        load_recipe(p)
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_overrides_apply_and_validate():
    r = parse_recipe(BASE)
    assert r.with_overrides({"selection.budgets": [5]}).selection.budgets == (5,)
    with pytest.raises(RecipeError, match="no such key 'budgetz'"):
        r.with_overrides({"selection.budgetz": [5]})


def test_names_are_checked_against_the_registries():
    with pytest.raises(RecipeError, match=r"data\.targets\.0 = .*unknown benchmark 'mmlux'; registered: .*jsonl"):
        parse_recipe({**BASE, "data": {**BASE["data"], "targets": [{"task": "mmlux"}]}})
    with pytest.raises(RecipeError, match=r"data\.pool\.0 = .*unknown source 'sciqq'"):
        parse_recipe({**BASE, "data": {**BASE["data"], "pool": [{"source": "sciqq"}]}})
    with pytest.raises(RecipeError, match=r"source 'jsonl' needs a path"):
        parse_recipe({**BASE, "data": {**BASE["data"], "pool": [{"source": "jsonl"}]}})
    with pytest.raises(RecipeError, match=r"features\.projector = 'dense': .*unknown projector 'dense'"):
        parse_recipe({**BASE, "features": {"projector": "dense"}})
    with pytest.raises(RecipeError, match=r"evaluation\.benchmarks: unknown benchmark 'legal'"):
        parse_recipe({**BASE, "evaluation": {"benchmarks": {"legal": 5}}})


def test_a_jsonl_target_is_evaluated_by_its_task_name():
    target = {
        "task": "legal",
        "kind": "jsonl",
        "capability": "law",
        "validation_path": "v.jsonl",
        "items_path": "i.jsonl",
    }
    r = parse_recipe(
        {**BASE, "data": {**BASE["data"], "targets": [target]}, "evaluation": {"benchmarks": {"legal": 5}}}
    )
    assert r.target("legal").kind == "jsonl" and r.target("mmlu").task == "mmlu"


def _with_selection(selection: dict, pool=None) -> dict:
    return {**BASE, "data": {**BASE["data"], **({"pool": pool} if pool else {})}, "selection": selection}


def test_a_selector_whose_inputs_cannot_exist_fails_at_load_naming_them(tmp_path):
    # a pool field no source has: built-in sources carry no quality / labels / embedding
    with pytest.raises(RecipeError, match=r"selection.options.kmq.quality is 'field', but pool source 'sciq'"):
        parse_recipe(_with_selection({"methods": ["kmq"], "options": {"kmq": {"quality": "field"}}}))
    # a user's file that lacks it on one line: the file and line are named
    pool = tmp_path / "pool.jsonl"
    rec = {"id": "a", "source": "s", "messages": [{"role": "assistant", "content": "x"}], "labels": ["t"]}
    pool.write_text(json.dumps(rec) + "\n" + json.dumps({k: v for k, v in rec.items() if k != "labels"}) + "\n")
    with pytest.raises(RecipeError, match=r"pool.jsonl, line 2: no 'labels' field"):
        parse_recipe(
            _with_selection(
                {"methods": ["mig"], "options": {"mig": {"labels": "field"}}},
                pool=[{"source": "jsonl", "path": str(pool)}],
            )
        )
    with pytest.raises(RecipeError, match=r"selection.options.mig.embeddings: file .*nope.npy does not exist"):
        parse_recipe(
            _with_selection({"methods": ["mig"], "options": {"mig": {"embeddings": str(tmp_path / "nope.npy")}}})
        )
    # unknown options and methods are named
    with pytest.raises(RecipeError, match=r"selection.options.kmq.clusterz"):
        parse_recipe(_with_selection({"methods": ["kmq"], "options": {"kmq": {"clusterz": 3}}}))
    # auto (the default) is always available: representations and the quality proxy are computed
    r = parse_recipe(_with_selection({"methods": ["kmq", "mig", "kmq-iterative", "random-balanced"]}))
    assert r.selection.options_of("kmq") == {}


@pytest.mark.parametrize("name", ["experiment-cpu.yaml", "experiment-gpu.yaml", "demo.yaml"])
def test_the_experiment_recipes_can_name_the_diversity_selectors(name):
    from flows.pipeline import per_run_steps

    methods = ["random", "random-balanced", "kmq", "kmq-iterative", "mig", "bids"]
    r = load_recipe(RECIPES / name).with_overrides({"selection.methods": methods})
    assert r.selection.methods == tuple(methods)
    assert "representations" in [s.name for s in per_run_steps(r)]


def test_a_formulation_the_benchmark_does_not_offer_is_named():
    ok = parse_recipe({**BASE, "evaluation": {"benchmarks": {"mmlu": 4, "gsm8k": 2}, "formulation": {"mmlu": "rc"}}})
    assert ok.evaluation.formulation == {"mmlu": "rc"}
    with pytest.raises(RecipeError, match=r"evaluation.formulation.gsm8k: 'rc' is not offered \(generate\)"):
        parse_recipe({**BASE, "evaluation": {"benchmarks": {"gsm8k": 2}, "formulation": {"gsm8k": "rc"}}})
    with pytest.raises(RecipeError, match="formulation: 'arc_challenge' is not in evaluation.benchmarks"):
        parse_recipe({**BASE, "evaluation": {"benchmarks": {"mmlu": 4}, "formulation": {"arc_challenge": "rc"}}})
