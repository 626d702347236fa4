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
