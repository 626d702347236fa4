"""Evaluation harness: batched scoring and generation equal one-at-a-time; metrics; protocols; decontamination."""

import math

import pytest
import torch

from bidsml.evaluation.benchmarks import (
    BenchItem,
    builtin_benchmark,
    contamination,
    load_benchmark,
    sample_items,
)
from bidsml.evaluation.benchmarks.bbh import BBH_TASKS
from bidsml.data.examples import Example
from bidsml.errors import DataError
from bidsml.evaluation.aggregate import summarize
from bidsml.evaluation.answers import final_number, program
from bidsml.evaluation.generation import generate
from bidsml.evaluation.harness import evaluate_benchmark_items
from bidsml.evaluation.prefix import prefix_groups
from bidsml.evaluation.scoring import continuation_logprobs
from bidsml.model import load_base_model
from bidsml.evaluation.sandbox import Limits, run_program
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


def _logprob(model, tokenizer, prompt, cont):
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c = tokenizer(cont, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([p + c])).logits[0].float(), -1)
    return sum(logp[len(p) - 1 + t, c[t]].item() for t in range(len(c))), len(c)


def test_rc_items_pick_by_loglikelihood_per_character_and_report_bits_per_byte(model, tokenizer):
    texts = [" red", " a long shade of green", " blue sky colour", " x"]
    items = [
        BenchItem(
            id=f"rc{i}",
            benchmark="arc_challenge",
            task="arc_challenge",
            prompt=f"Question: what colour is thing {i}?\nAnswer:",
            gold_text=texts[g],
            question="",
            choice_texts=texts,
            gold=g,
        )
        for i, g in enumerate([0, 1, 2, 3, 1])
    ]
    rows = evaluate_benchmark_items(model, tokenizer, items, 3, 3, 128, 8, LIMITS)
    for it, row in zip(items, rows):
        ref = [_logprob(model, tokenizer, it.prompt, t) for t in texts]
        per_char = max(range(4), key=lambda j: (ref[j][0] / len(texts[j]), -j))
        per_token = max(range(4), key=lambda j: (ref[j][0] / ref[j][1], -j))
        assert row["score"] == float(per_char == it.gold)
        assert row["score_per_token"] == float(per_token == it.gold)
        lp, n = ref[it.gold]
        assert row["nll"] == pytest.approx(-lp / n, abs=1e-4)
        assert row["bpb"] == pytest.approx(-lp / (math.log(2) * len(it.gold_text.encode())), abs=1e-4)


def test_mmlu_and_arc_offer_a_cloze_formulation_on_the_same_items():
    for name, shots in (("mmlu", 5), ("arc_challenge", 5)):
        mc, rc = load_benchmark(name, "mc"), load_benchmark(name, "rc")
        assert [it.id for it in mc] == [it.id for it in rc] and len(rc) > 1000
        it = rc[0]
        assert it.prompt.count("Question:") == shots + 1 and it.prompt.endswith("\nAnswer:")
        assert it.choices is None and len(it.choice_texts) >= 3 and it.gold_text == it.choice_texts[it.gold]
        assert all(t.startswith(" ") and len(t) > 1 for t in it.choice_texts)
        assert [x.gold for x in mc[:50]] == [x.gold for x in rc[:50]]
    with pytest.raises(DataError, match="no formulation 'rc'.*offers: generate"):
        load_benchmark("gsm8k", "rc")


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


def _lora_model(layers):
    from bidsml.config import LoraConfig
    from bidsml.training.lora import add_lora

    lm = add_lora(load_base_model(TINY), LoraConfig(r=4, alpha=8, dropout=0.0, layers=layers), seed=0)
    torch.manual_seed(1)
    for name, p in lm.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)  # a fine-tune that moves the scores
    return lm.eval()


def _few_shot_pairs(tokenizer):
    shots = "".join(f"Question {i}: what is {i} plus {i}?\nAnswer: {2 * i}\n\n" for i in range(12))
    pairs = [(shots + f"Question: what is {q}?\nAnswer:", f" {a}") for q, a in [("3+4", 7), ("10-2", 8), ("1", 1)]]
    pairs += [("An unrelated prompt", " with its own continuation"), ("Short", " one two three four")]
    pairs += [(shots + "Question: last?\nAnswer:", " x")]
    letters = [tokenizer(x, add_special_tokens=False)["input_ids"][0] for x in (" 7", " 8", " 1")]
    return pairs, [letters] * len(pairs)


def test_shared_trunk_scores_equal_full_passes_whoever_recorded_the_states(model, tokenizer):
    """The base model records layer 0's output once; a LoRA fine-tune of layer 1 reuses it: same scores as full."""
    from bidsml.evaluation.trunk import TrunkStates

    pairs, cands = _few_shot_pairs(tokenizer)
    tuned = _lora_model((1,))
    trunk = TrunkStates(layer=1)
    base_trunk = continuation_logprobs(model, tokenizer, pairs, 2, 512, cands, trunk=trunk)
    assert trunk.recorded and trunk.valid and len(trunk.items) == len(pairs) and len(trunk.prefixes) == 1
    base_full = continuation_logprobs(model, tokenizer, pairs, 2, 512, cands, share_prefix=False)
    reused = TrunkStates(layer=1, prefixes=dict(trunk.prefixes), items=dict(trunk.items))
    tuned_reused = continuation_logprobs(tuned, tokenizer, pairs, 2, 512, cands, trunk=reused)
    assert not reused.recorded and reused.valid
    tuned_full = continuation_logprobs(tuned, tokenizer, pairs, 2, 512, cands, share_prefix=False)
    for scores, full in [(base_trunk, base_full), (tuned_reused, tuned_full)]:
        for (a, n, fa), (b, m, fb) in zip(scores, full):
            assert n == m and a == pytest.approx(b, abs=1e-4)
            assert fa == pytest.approx(fb, abs=1e-4) if fa else fb is None
    assert max(abs(a[0] - b[0]) for a, b in zip(tuned_full, base_full)) > 1e-3  # the fine-tune does move them
    # The fine-tune recording its own trunk gets the base's states and bit-identical scores to reusing them.
    own = TrunkStates(layer=1)
    assert continuation_logprobs(tuned, tokenizer, pairs, 2, 512, cands, trunk=own) == tuned_reused
    assert all(torch.equal(own.items[i], trunk.items[i]) for i in trunk.items)


def test_trunk_layer_is_the_lowest_layer_the_model_shares_with_the_base(model):
    from bidsml.evaluation.trunk import trunk_layer

    assert trunk_layer(model, 1) == 1  # the base model shares every layer
    assert trunk_layer(_lora_model((1,)), 1) == 1
    assert trunk_layer(_lora_model(None), 1) is None  # LoRA on layer 0 too: nothing below it is shared
    assert trunk_layer(model, None) is None and trunk_layer(model, 0) is None and trunk_layer(model, 9) is None


def test_a_trunk_that_does_not_reproduce_a_full_pass_falls_back_with_a_warning(model, tokenizer):
    from bidsml.evaluation.trunk import TrunkStates

    pairs, cands = _few_shot_pairs(tokenizer)
    trunk = TrunkStates(layer=1)
    continuation_logprobs(model, tokenizer, pairs, 2, 512, cands, trunk=trunk)
    wrong = TrunkStates(layer=1, prefixes=dict(trunk.prefixes), items={i: t + 1.0 for i, t in trunk.items.items()})
    with pytest.warns(UserWarning, match="differs from a full pass"):
        scores = continuation_logprobs(model, tokenizer, pairs, 2, 512, cands, trunk=wrong)
    assert not wrong.valid
    full = continuation_logprobs(model, tokenizer, pairs, 2, 512, cands, share_prefix=False)
    assert [s[0] for s in scores] == pytest.approx([f[0] for f in full], abs=1e-4)
    with pytest.raises(ValueError, match="do not match these items"):
        continuation_logprobs(model, tokenizer, pairs[:3], 2, 512, cands[:3], trunk=trunk)


def test_trunk_states_round_trip_and_their_file_is_named_by_what_determines_them(model, tokenizer, tmp_path):
    from bidsml.evaluation.trunk import TrunkStates
    from storage.trunk_states import load_trunk, save_trunk, trunk_path

    pairs, cands = _few_shot_pairs(tokenizer)
    trunk = TrunkStates(layer=1)
    continuation_logprobs(model, tokenizer, pairs, 2, 512, cands, trunk=trunk)
    path = trunk_path(tmp_path, {"items": "a", "layer": 1})
    assert path != trunk_path(tmp_path, {"items": "b", "layer": 1}) != trunk_path(tmp_path, {"items": "a", "layer": 2})
    assert load_trunk(path, 1) is None
    save_trunk(path, trunk)
    back = load_trunk(path, 1)
    assert sorted(back.items) == sorted(trunk.items) and sorted(back.prefixes) == sorted(trunk.prefixes)
    assert all(torch.equal(back.items[i], trunk.items[i]) for i in trunk.items)
    path.write_bytes(b"torn")
    assert load_trunk(path, 1) is None  # a torn file is recomputed, never trusted
