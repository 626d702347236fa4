"""The pruning papers' zero-shot suite (BoolQ, PIQA, HellaSwag, WinoGrande, ARC-Easy/Challenge, OpenBookQA) and
LAMBADA perplexity: what is scored, against what, and how (per-choice contexts, raw or per-character
log-likelihood, text scored from its start)."""

import math

import pytest
import torch

from bidsml.config import parse_recipe
from bidsml.errors import RecipeError
from bidsml.evaluation.benchmarks import builtin_benchmark, load_benchmark, sample_items
from bidsml.evaluation.benchmarks.zero_shot import ZERO_SHOT
from bidsml.evaluation.harness import evaluate_benchmark_items
from bidsml.model import load_base_model
from tests.conftest import TINY

# docs per task in OLMES's files (validation split; test split for ARC and OpenBookQA)
DOCS = {"boolq": 3270, "piqa": 1838, "hellaswag": 10042, "winogrande": 1267}
TEST_DOCS = {"arc_easy": 2376, "arc_challenge": 1172, "openbookqa": 500}


def _items(name):
    return load_benchmark(name, "rc0" if name == "arc_challenge" else None)


@pytest.mark.parametrize("task", [t.name for t in ZERO_SHOT])
def test_each_task_scores_every_doc_once_and_never_a_validation_example(task):
    bench = builtin_benchmark(task)
    items, val = _items(task), bench.validation()
    assert len({it.id for it in items}) == len(items)
    if task in DOCS:  # one split: a fixed tenth held out for validation, the rest scored
        assert len(items) + len(val) == DOCS[task] and 0.08 < len(val) / DOCS[task] < 0.12
    else:
        assert len(items) == TEST_DOCS[task] and len(val) > 0
    scored_questions = {it.question for it in items}
    assert not any(v.messages[0].content in scored_questions for v in val)
    for it in items[:50]:  # zero-shot: the item's own context only
        assert it.gold_text == it.choice_texts[it.gold] and "\n\nQuestion:" not in it.prompt
        assert it.choice_norm == ("none" if task in ("boolq", "winogrande") else "char")


def test_winogrande_scores_the_same_continuation_after_each_filled_in_option():
    it = _items("winogrande")[0]
    assert it.choice_prompts and len(set(it.choice_prompts)) == 2 and len(set(it.choice_texts)) == 1
    assert it.prompt == it.choice_prompts[it.gold]


@pytest.fixture(scope="module")
def model():
    return load_base_model(TINY)


def _logprob(model, tokenizer, prompt_ids, cont):
    c = tokenizer(cont, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([prompt_ids + c])).logits[0].float(), -1)
    return sum(logp[len(prompt_ids) - 1 + t, c[t]].item() for t in range(len(c))), len(c)


def test_per_choice_contexts_and_raw_likelihood_pick_as_a_direct_computation(model, tokenizer):
    short = [it for it in _items("boolq") if len(tokenizer(it.prompt)["input_ids"]) < 400][:3]  # not truncated
    items = sample_items(_items("winogrande"), 4, 0) + short
    rows = evaluate_benchmark_items(model, tokenizer, items, 4, 4, 512, 8)
    for it, row in zip(items, rows):
        prompts = it.choice_prompts or [it.prompt] * len(it.choice_texts)
        ref = [
            _logprob(model, tokenizer, tokenizer(p, add_special_tokens=False)["input_ids"], t)[0]
            for p, t in zip(prompts, it.choice_texts)
        ]
        raw = max(range(len(ref)), key=lambda j: (ref[j], -j))  # summed log-likelihood (acc_raw)
        assert row["score"] == float(raw == it.gold), it.id
        assert row["nll"] * row["tokens"] == pytest.approx(-ref[it.gold], abs=1e-3)


def test_a_text_with_an_empty_prompt_is_scored_from_the_start_token(model, tokenizer):
    it = sample_items(load_benchmark("lambada_ppl"), 2, 0)
    rows = evaluate_benchmark_items(model, tokenizer, it, 2, 2, 512, 8)
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    for item, row in zip(it, rows):
        lp, n = _logprob(model, tokenizer, [start], item.gold_text)
        assert row["tokens"] == n and row["nll"] == pytest.approx(-lp / n, abs=1e-4)
        assert math.isnan(row["score"]) and row["metric"] == "perplexity"


def test_a_pool_source_holding_a_scored_benchmark_is_refused_at_recipe_load():
    raw = {
        "name": "x",
        "model": {"tiny": True},
        "data": {"pool": [{"source": "sciq", "n": 4}, {"source": "piqa", "n": 4}], "targets": [{"task": "mmlu"}]},
        "evaluation": {"benchmarks": {"piqa": 5}},
    }
    with pytest.raises(RecipeError, match="data.pool.1: source 'piqa' holds the scored items of benchmark 'piqa'"):
        parse_recipe(raw)
    parse_recipe({**raw, "evaluation": {"benchmarks": {"hellaswag": 5}}})  # another benchmark: fine
