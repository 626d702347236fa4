"""Evaluation harness: batched scoring and generation equal one-at-a-time; metrics; protocols; decontamination."""

import pytest
import torch

from bidsml.benchmarks import (
    BenchItem,
    builtin_benchmark,
    contamination,
    load_benchmark,
    sample_items,
)
from bidsml.benchmarks.bbh import BBH_TASKS
from bidsml.data import Example
from bidsml.evaluate import (
    continuation_logprobs,
    evaluate_benchmark_items,
    prefix_groups,
    final_number,
    generate,
    program,
    summarize,
)
from bidsml.model import load_base_model
from bidsml.sandbox import Limits, run_program
from tests.conftest import TINY

LIMITS = Limits(timeout_s=5, cpu_s=5, memory_mb=512)


@pytest.fixture(scope="module")
def model():
    return load_base_model(TINY)


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
    p = tokenizer(pairs[1][0], add_special_tokens=False)["input_ids"]
    c = tokenizer(pairs[1][1], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([p + c])).logits[0].float(), -1)
    ref = sum(logp[len(p) - 1 + t, c[t]].item() for t in range(len(c)))
    assert batched[1][0] == pytest.approx(ref, abs=1e-4)


def test_prefix_groups_cover_every_item_once_and_keep_a_prompt_token():
    shots = list(range(100, 180))  # an 80-token few-shot prefix
    prompts = [shots + [1, 2], shots + [1, 3, 4], shots[:70] + [9], [5, 6, 7], shots + [1], [5, 6, 8]]
    groups = prefix_groups(prompts, min_shared=64)
    assert sorted(i for _, g in groups for i in g) == list(range(len(prompts)))
    assert (70, [0, 1, 2, 4]) in groups  # common start of all four is 70 tokens; each keeps >= 1 own token
    assert (0, [3, 5]) in groups  # they share 2 tokens only: no cache
    for shared, g in groups:
        assert all(shared <= len(prompts[i]) - 1 for i in g)


def test_prefix_cached_scores_equal_full_passes(model, tokenizer):
    """Items sharing a long few-shot prefix: same log-probs and candidate log-probs with and without its cache."""
    shots = "".join(f"Question {i}: what is {i} plus {i}?\nAnswer: {2 * i}\n\n" for i in range(12))
    pairs = [(shots + f"Question: what is {q}?\nAnswer:", f" {a}") for q, a in [("3+4", 7), ("10-2", 8), ("1", 1)]]
    pairs += [("An unrelated prompt", " with its own continuation"), (shots + "Question: last?\nAnswer:", " x")]
    letters = [tokenizer(x, add_special_tokens=False)["input_ids"][0] for x in (" 7", " 8", " 1")]
    cands = [letters] * len(pairs)
    assert any(s > 0 for s, _ in prefix_groups([tokenizer(p, add_special_tokens=False)["input_ids"] for p, _ in pairs]))
    fast = continuation_logprobs(model, tokenizer, pairs, 2, 512, cands, share_prefix=True)
    full = continuation_logprobs(model, tokenizer, pairs, 2, 512, cands, share_prefix=False)
    for (a, n, fa), (b, m, fb) in zip(fast, full):
        assert n == m and a == pytest.approx(b, abs=1e-4)
        assert fa == pytest.approx(fb, abs=1e-4)


def test_batched_left_padded_generation_equals_one_at_a_time(model, tokenizer):
    prompts = ["def add(a, b):", "Question: what is two plus two?\nAnswer:", "x"]
    batched = generate(model, tokenizer, prompts, [], 6, batch_size=3, max_len=64)
    for p, b in zip(prompts, batched):
        assert generate(model, tokenizer, [p], [], 6, batch_size=1, max_len=64) == [b]
    # greedy: equals argmax decoding by hand
    ids = tokenizer(prompts[0], add_special_tokens=False)["input_ids"]
    for _ in range(6):
        with torch.no_grad():
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    assert batched[0] == tokenizer.decode(ids[-6:], skip_special_tokens=True)


def test_final_number_and_exact_match():
    assert final_number("3 + 4 = 7. So the answer is 1,234.") == "1234"
    assert final_number("we get 5 then 12.50") == "12.5"
    assert final_number("no digits") is None


def _mc_item(i, gold):
    return BenchItem(
        id=f"q{i}",
        benchmark="mmlu",
        task="colors",
        prompt=f"Color number {i}? A. red B. green C. blue\nAnswer:",
        gold_text=f" {'ABC'[gold]}",
        question="",
        choices=[" A", " B", " C"],
        gold=gold,
        capability="knowledge",
        metric="accuracy",
    )


def test_mc_accuracy_picks_the_most_likely_letter(model, tokenizer):
    items = [_mc_item(i, g) for i, g in enumerate([0, 1, 2, 0])]
    rows = evaluate_benchmark_items(model, tokenizer, items, 4, 4, 128, 8, LIMITS)
    letter_ids = [tokenizer(L, add_special_tokens=False)["input_ids"][0] for L in [" A", " B", " C"]]
    for it, row in zip(items, rows):
        ids = tokenizer(it.prompt, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        assert row["score"] == float(int(torch.argmax(logits[letter_ids])) == it.gold)
        assert row["nll"] > 0 and row["metric"] == "accuracy" and row["capability"] == "knowledge"


def test_canonical_solutions_pass_and_the_harness_scores_pass_at_1():
    humaneval = sample_items(load_benchmark("humaneval"), 3, 0)
    mbpp = sample_items(load_benchmark("mbpp"), 3, 0)
    for it in humaneval + mbpp:
        gold = it.gold_text.removesuffix("```").rstrip() + "\n"
        assert run_program(program(it, gold), LIMITS).passed, it.id
        assert not run_program(program(it, "    return None\n" if it.benchmark == "humaneval" else ""), LIMITS).passed


def test_protocols_and_held_out_material():
    mmlu = load_benchmark("mmlu")
    assert len({it.task for it in mmlu}) == 57 and mmlu[0].prompt.count("\nAnswer:") == 6  # 5 shots + the item
    gsm = load_benchmark("gsm8k")
    assert gsm[0].prompt.count("Question:") == 9 and gsm[0].answers[0].lstrip("-").isdigit()  # 8-shot CoT
    bbh = load_benchmark("bbh")
    assert {it.task for it in bbh} == set(BBH_TASKS) and bbh[0].prompt.count("\nA:") == 4  # 3 shots + item
    # validation (influence) examples never appear among the scored items
    for task in ("gsm8k", "humaneval", "mbpp", "mmlu", "arc_challenge", "bbh"):
        val_ids = {e.id for e in builtin_benchmark(task).validation()}
        scored = {it.id for it in load_benchmark(task)}
        assert val_ids and not (val_ids & scored), task
    shots = {e.messages[0].content for e in builtin_benchmark("bbh").validation()}
    assert not shots & {it.question for it in bbh}


def test_limits_spread_over_subjects():
    items = sample_items(load_benchmark("mmlu"), 57, seed=0)
    assert len(items) == 57 and len({it.task for it in items}) == 57
    assert [it.id for it in items] == [it.id for it in sample_items(load_benchmark("mmlu"), 57, seed=0)]


def test_summary_levels_macro_average_and_worst():
    rows = [
        {"benchmark": "mmlu", "task": "a", "capability": "knowledge", "metric": "accuracy", "score": 1.0, "nll": 1.0},
        {"benchmark": "mmlu", "task": "b", "capability": "knowledge", "metric": "accuracy", "score": 0.0, "nll": 3.0},
        {
            "benchmark": "gsm8k",
            "task": "gsm8k",
            "capability": "math",
            "metric": "exact_match",
            "score": 0.0,
            "nll": 4.0,
        },
        {"benchmark": "mbpp", "task": "mbpp", "capability": "code", "metric": "pass@1", "score": 1.0, "nll": 2.0},
    ]
    s = {(r["level"], r["name"]): r for r in summarize(rows)}
    assert s[("task", "mmlu/a")]["score"] == 1.0 and ("task", "gsm8k/gsm8k") not in s
    assert s[("benchmark", "mmlu")]["score"] == 0.5 and s[("benchmark", "mmlu")]["nll"] == 2.0
    assert s[("capability", "code")]["score"] == 1.0
    assert s[("overall", "macro-average")]["score"] == pytest.approx(0.5)
    worst = s[("overall", "worst-task")]
    assert worst["score"] == 0.0 and "gsm8k" in worst["metric"] and worst["nll"] == 4.0


def test_contamination_finds_shared_ngrams():
    item = BenchItem(
        id="t/1",
        benchmark="gsm8k",
        task="gsm8k",
        prompt="",
        gold_text="",
        question="Janet has seven red apples and buys three more green apples at the market today",
    )
    clean = Example(
        id="p/1",
        source="p",
        messages=[
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "Paris"},
        ],
    )
    leaked = Example(
        id="p/2",
        source="p",
        messages=[
            {
                "role": "user",
                "content": "Copy: janet has seven red apples and buys three more green apples at the market",
            },
            {"role": "assistant", "content": "ok"},
        ],
    )
    rep = contamination([clean], [item], n=13)["benchmarks"]["gsm8k"]
    assert rep["n_overlapping"] == 0
    rep = contamination([clean, leaked], [item], n=13)["benchmarks"]["gsm8k"]
    assert rep["n_overlapping"] == 1 and rep["pairs"] == [{"item": "t/1", "pool": "p/2"}]
