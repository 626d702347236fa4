"""Evaluation: batched scoring equals one-at-a-time scoring; MC accuracy and summaries."""

import pytest
import torch

from bidsml.data import Example
from bidsml.evaluate import continuation_logprobs, evaluate_items, summarize
from bidsml.model import load_base_model
from bidsml.sources import mc_answer, mc_prompt
from tests.conftest import TINY


@pytest.fixture(scope="module")
def model():
    return load_base_model(TINY, seed=0)


def _mc(i, gold):
    choices = ["red", "green", "blue", "cyan"]
    return Example(
        id=f"q{i}",
        source="t",
        task="quiz",
        capability="knowledge",
        choices=choices,
        gold=gold,
        messages=[
            {"role": "user", "content": mc_prompt(f"Color number {i}?", choices)},
            {"role": "assistant", "content": mc_answer(choices, gold)},
        ],
    )


def test_batched_scores_equal_single_item_scores(model, tokenizer):
    pairs = [
        ("Hello there, how", " are you today"),
        ("One two", " three"),
        ("A much longer prompt with many words in it", " ok"),
    ]
    batched = continuation_logprobs(model, tokenizer, pairs, batch_size=3, max_len=64)
    for pair, (lp, n, _) in zip(pairs, batched):
        ((single, n1, _),) = continuation_logprobs(model, tokenizer, [pair], batch_size=1, max_len=64)
        assert n == n1 and lp == pytest.approx(single, abs=1e-4)
    # against a direct computation
    p = tokenizer(pairs[1][0], add_special_tokens=False)["input_ids"]
    c = tokenizer(pairs[1][1], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([p + c])).logits[0].float(), -1)
    ref = sum(logp[len(p) - 1 + t, c[t]].item() for t in range(len(c)))
    assert batched[1][0] == pytest.approx(ref, abs=1e-4)


def test_mc_accuracy_picks_the_most_likely_letter(model, tokenizer):
    items = [_mc(i, g) for i, g in enumerate([0, 1, 2, 3, 0, 1])]
    rows = evaluate_items(model, tokenizer, items, batch_size=4, max_len=128)
    letter_ids = [tokenizer(L, add_special_tokens=False)["input_ids"][0] for L in "ABCD"]
    from bidsml.data import prompt_and_answer

    for ex, row in zip(items, rows):
        prompt, _ = prompt_and_answer(tokenizer, ex)
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        pred = int(torch.argmax(logits[letter_ids]))
        assert row["correct"] == float(pred == ex.gold)
        assert row["nll"] > 0


def test_summary_has_macro_average_and_worst_task():
    rows = [
        {"task": "a", "capability": "k", "correct": 1.0, "nll": 1.0},
        {"task": "a", "capability": "k", "correct": 0.0, "nll": 3.0},
        {"task": "b", "capability": "m", "correct": None, "nll": 4.0},
    ]
    s = {r["task"]: r for r in summarize(rows)}
    assert s["a"]["accuracy"] == 0.5 and s["a"]["nll"] == 2.0
    assert s["b"]["accuracy"] is None
    assert s["macro-average"]["nll"] == 3.0 and s["worst-task"]["nll"] == 4.0 and s["worst-task"]["accuracy"] == 0.5
