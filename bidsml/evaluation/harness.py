"""Evaluation of benchmark items end to end: scoring, generation and sandboxed tests per item (one row each)."""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from dataclasses import replace
from typing import Callable

from bidsml.evaluation.benchmarks.base import BenchItem
from bidsml.data.examples import chat_prompt
from bidsml.evaluation.answers import program, score_generation
from bidsml.evaluation.generation import _tokens, generate
from bidsml.evaluation.scoring import continuation_logprobs
from bidsml.evaluation.trunk import TrunkStates
from bidsml.evaluation.sandbox import Limits, run_programs


def evaluate_benchmark_items(
    model,
    tokenizer,
    items: list[BenchItem],
    batch_size: int,
    gen_batch_size: int,
    max_len: int,
    max_new_tokens: int,
    limits: Limits = Limits(),
    workers: int = 2,
    on_progress: Callable[[int, int], None] | None = None,
    trunk: TrunkStates | None = None,
) -> list[dict]:
    """Returns one row per item: ids, benchmark, task, capability, metric, score (0/1), score_per_token, gold NLL
    (per token), its token count, gold bits per byte (bpb), output; the chosen option (`pred`) and every option's
    log-likelihood (MC, RC), and the prompt's digest (`prompt_sha`: which text was scored).

    MC items: the highest-scoring option letter after the prompt (one forward
    pass, which also gives the gold NLL). RC (cloze) items: every choice's text
    scored as a continuation (of its own prompt where `choice_prompts` are given); `score` picks by
    log-likelihood per character (summed, with `choice_norm` "none"), `score_per_token` by log-likelihood per
    token (ties: the first choice).
    Every item's `bpb` is the gold continuation's negative log-likelihood in
    bits over its UTF-8 bytes, comparable across tokenizers and tasks. Generation items: greedy decoding,
    exact match (GSM8K's final number, BBH's answer) or pass@1 by running the
    benchmark's tests in the sandbox. `trunk`: see `continuation_logprobs`.
    """
    items = [replace(it, prompt=chat_prompt(tokenizer, it.messages)) if it.messages else it for it in items]
    pairs, cands, owner = [], [], []  # one pair per item, or per choice of an RC item
    for k, it in enumerate(items):
        texts = it.choice_texts or [it.gold_text]
        for prompt, text in zip(it.choice_prompts or [it.prompt] * len(texts), texts):
            pairs.append((prompt, text))
            cands.append([_tokens(tokenizer, c)[0] for c in it.choices] if it.choices else None)
            owner.append(k)
    n_phases = 2 + len({it.benchmark for it in items if it.max_new_tokens})
    report = on_progress or (lambda done, total: None)
    flat = continuation_logprobs(model, tokenizer, pairs, batch_size, max_len, cands, desc="score", trunk=trunk)
    per_item: list[list] = [[] for _ in items]
    for k, res in zip(owner, flat):
        per_item[k].append(res)
    report(1, n_phases)
    outputs: dict[int, str] = {}
    by_bench: dict[str, list[int]] = defaultdict(list)
    for k, it in enumerate(items):
        if it.max_new_tokens:
            by_bench[it.benchmark].append(k)
    for bench, ks in by_bench.items():
        first = items[ks[0]]
        texts = generate(
            model,
            tokenizer,
            [items[k].prompt for k in ks],
            first.stop,
            min(first.max_new_tokens, max_new_tokens),
            gen_batch_size,
            max_len,
            desc=f"generate {bench}",
        )
        outputs.update(zip(ks, texts))
        report(1 + len({items[k].benchmark for k in outputs}), n_phases)
    code = [k for k in outputs if items[k].code_suffix]
    results = run_programs([program(items[k], outputs[k]) for k in code], limits, workers)
    passed = {k: float(r.passed) for k, r in zip(code, results)}
    report(n_phases, n_phases)
    rows = []
    for k, (it, results) in enumerate(zip(items, per_item)):
        lp, cnt, first = results[it.gold if it.choice_texts else 0]
        per_token = float("nan")
        pred, choice_lps = -1, None
        if it.choice_texts:
            norm = [max(len(t), 1) if it.choice_norm == "char" else 1 for t in it.choice_texts]
            choice_lps = [float(r[0]) for r in results]
            pred = _best([r[0] / n for r, n in zip(results, norm)])
            score = float(pred == it.gold)
            per_token = float(_best([r[0] / max(r[1], 1) for r in results]) == it.gold)
        elif it.choices:
            choice_lps = [float(v) for v in first]
            pred = _best(first)
            score = per_token = float(pred == it.gold)
        elif k in passed:
            score = passed[k]
        elif k in outputs:
            score = score_generation(it, outputs[k])
        else:  # scored by its gold NLL only
            score = float("nan")
        rows.append(
            {
                "id": it.id,
                "benchmark": it.benchmark,
                "task": it.task,
                "capability": it.capability,
                "metric": it.metric,
                "score": score,
                "score_per_token": per_token,
                "n_choices": len(it.choice_texts or it.choices or []),
                "nll": -lp / max(cnt, 1),
                "tokens": cnt,  # the gold continuation's token count (a corpus perplexity weighs by it)
                "bpb": -lp / (math.log(2) * max(len(it.gold_text.encode("utf-8")), 1)),
                "output": outputs.get(k),
                "harness": "builtin",
                "pred": pred,  # the chosen option (MC, RC; -1 otherwise)
                "choice_logprobs": choice_lps,  # each option's log-likelihood (MC: its letter's; RC: its text's)
                "prompt_sha": hashlib.sha256(it.prompt.encode("utf-8")).hexdigest()[:16],
            }
        )
    return rows


def _best(values: list[float]) -> int:
    """Returns the index of the highest value (ties: the first)."""
    return max(range(len(values)), key=lambda j: (values[j], -j))
