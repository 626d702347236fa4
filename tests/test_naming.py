"""Run names a person reads in the UI: what a run is, and which round of an iterative method."""

from flows.naming import describe


def _sel(method: str, budget: float, **meta) -> dict:
    return {"meta": {"method": method, "budget": budget, "k": 8, **meta}}


def test_single_pass_methods_are_named_by_method_and_budget_only():
    assert describe("selection", {"params": {"method": "bids", "budget": 0.1}}) == "selection bids@0.1"
    assert describe("finetune", {"inputs": {"selection": _sel("less", 0.05)}}) == "finetune less@0.05"
    assert describe("evaluation", {"inputs": {"adapter": _sel("random", 8)}}) == "evaluation random@8"
    assert describe("evaluation", {}) == "evaluation base"


def test_every_round_of_an_iterative_method_says_which_round_it_is():
    params = {"method": "kmq-iterative", "budget": 8, "options": {"rounds": 3}}
    names = [describe("selection", {"params": {**params, **({"round": r} if r else {})}}) for r in range(3)]
    assert names == [f"selection kmq-iterative@8 · round {r} of 3" for r in range(3)]
    ft = describe("finetune", {"inputs": {"selection": _sel("kmq-iterative", 8, round=1, rounds=3)}})
    assert ft == "finetune kmq-iterative@8 · round 1 of 3"


def test_a_name_is_made_even_for_options_that_do_not_parse():
    bad = {"params": {"method": "kmq-iterative", "budget": 8, "options": {"rounds": "many"}}}
    assert describe("selection", bad) == "selection kmq-iterative@8"


def test_names_come_from_each_step_s_own_label():
    # tune and probe name their runs by the labels their declarations give (tasks/tune.py, tasks/probe.py)
    assert describe("tune", {"params": {"lr": 1e-4, "epochs": 2, "k": 8}}) == "tune lr0.0001-ep2"
    probe = {"params": {"arm": "top", "task": "mmlu", "k": 8, "seed": 1}}
    assert describe("probe", probe) == "probe top[mmlu]#1"
    # a call reading its input from a run record: named by the label asked for, else by the latest artifact
    assert describe("finetune", {"label": "bids@0.1"}) == "finetune bids@0.1"
    assert describe("finetune", {}) == "finetune latest selection"
    assert describe("evaluation", {"label": "less@8"}) == "evaluation less@8"
    # the select deployment's form: the selection it makes; a deployment run from a file: the file's stem
    form = {"method": "bids", "budget": 0.1, "recipe_path": "recipes/demo.yaml"}
    assert describe("select-finetune-evaluate", form) == "select-finetune-evaluate bids@0.1"


def test_an_earlier_round_s_artifact_is_labelled_by_its_round_and_the_last_by_the_branch():
    from tasks.registry import STEPS
    from tasks.selection import SelectionParams

    params = [SelectionParams(method="kmq-iterative", budget=8, options={"rounds": 3}, round=r) for r in range(3)]
    labels = [STEPS["selection"].label_of({}, p) for p in params]
    assert labels == ["kmq-iterative@8 round 0", "kmq-iterative@8 round 1", "kmq-iterative@8"]
    assert STEPS["selection"].label_of({}, SelectionParams(method="bids", budget=0.1)) == "bids@0.1"


def test_the_pipeline_derives_its_branch_and_base_runs_from_the_declarations():
    from flows.pipeline import base_steps, branch_steps

    assert [s.name for s in branch_steps()] == ["selection", "finetune", "evaluation"]
    assert [s.name for s in base_steps()] == ["evaluation"]  # its adapter is optional: the base model's score
