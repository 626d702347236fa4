"""Evaluation of benchmark items end to end: scoring, generation and sandboxed tests per item (one row each)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from typing import Callable

from bidsml.benchmarks.base import BenchItem
from bidsml.data import chat_prompt
from bidsml.evaluation.answers import program, score_generation
from bidsml.evaluation.generation import _tokens, generate
from bidsml.evaluation.scoring import continuation_logprobs
from bidsml.evaluation.trunk import TrunkStates
from bidsml.sandbox import Limits, run_programs


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
    """Returns one row per item: ids, benchmark, task, capability, metric, score (0/1), gold NLL, output.

    MC items: the highest-scoring option letter after the prompt (one forward
    pass, which also gives the gold NLL). Generation items: greedy decoding,
    exact match (GSM8K's final number, BBH's answer) or pass@1 by running the
    benchmark's tests in the sandbox. `trunk`: see `continuation_logprobs`.
    """
    items = [replace(it, prompt=chat_prompt(tokenizer, it.messages)) if it.messages else it for it in items]
    pairs = [(it.prompt, it.gold_text) for it in items]
    n_phases = 2 + len({it.benchmark for it in items if it.max_new_tokens})
    report = on_progress or (lambda done, total: None)
    cands = [[_tokens(tokenizer, c)[0] for c in it.choices] if it.choices else None for it in items]
    scored = continuation_logprobs(model, tokenizer, pairs, batch_size, max_len, cands, desc="score", trunk=trunk)
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
    for k, (it, (lp, cnt, first)) in enumerate(zip(items, scored)):
        if it.choices:
            score = float(max(range(len(first)), key=lambda j: (first[j], -j)) == it.gold)
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
                "nll": -lp / max(cnt, 1),
                "output": outputs.get(k),
            }
        )
    return rows
