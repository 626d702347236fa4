"""Evaluation: multiple-choice accuracy and gold-answer NLL per task.

Multiple-choice items (MMLU, ARC) are scored in the MC format: the option
whose letter has the highest log-probability after the chat prompt wins.
Every item also gets the mean per-token negative log-likelihood of its gold
answer, a smooth metric that small models still move.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
from tqdm.auto import tqdm

from bidsml.data import Example, prompt_and_answer
from bidsml.sources import LETTERS


@torch.no_grad()
def continuation_logprobs(
    model,
    tokenizer,
    pairs: list[tuple[str, str]],
    batch_size: int,
    max_len: int,
    first_token_candidates: list[list[int] | None] | None = None,
    desc: str = "score",
) -> list[tuple[float, int, list[float] | None]]:
    """Returns, per (prompt, continuation): (sum log-prob, token count, candidate log-probs).

    Candidate log-probs are the log-probabilities of the given token ids as
    the FIRST token after the prompt (one forward pass scores a multiple-
    choice item: the options' letters). Prompts are truncated from the left so
    the continuation fits in `max_len`; batches are length-sorted.
    """
    device = next(model.parameters()).device
    encoded = []
    for prompt, cont in pairs:
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c = tokenizer(cont, add_special_tokens=False)["input_ids"][: max_len - 1]
        p = p[-(max_len - len(c)) :]
        encoded.append((p, c))
    cands = first_token_candidates or [None] * len(pairs)
    order = sorted(range(len(encoded)), key=lambda i: -(len(encoded[i][0]) + len(encoded[i][1])))
    out: list = [None] * len(encoded)
    for s in tqdm(range(0, len(order), batch_size), desc=desc, leave=False):
        idx = order[s : s + batch_size]
        L = max(len(encoded[i][0]) + len(encoded[i][1]) for i in idx)
        ids = torch.full((len(idx), L), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, i in enumerate(idx):
            seq = encoded[i][0] + encoded[i][1]
            ids[b, : len(seq)] = torch.tensor(seq)
            mask[b, : len(seq)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        for b, i in enumerate(idx):
            p, c = encoded[i]
            logp = torch.log_softmax(logits[b, len(p) - 1 : len(p) + len(c) - 1].float(), dim=-1)  # (len(c), V)
            total = logp[torch.arange(len(c)), torch.tensor(c, device=device)].sum().item()
            first = logp[0, cands[i]].tolist() if cands[i] else None
            out[i] = (total, len(c), first)
    return out


def evaluate_items(model, tokenizer, items: list[Example], batch_size: int, max_len: int) -> list[dict]:
    """Returns one row per item: id, task, capability, correct (MC only, else None), nll."""
    prompts = [prompt_and_answer(tokenizer, ex) for ex in items]
    letter_ids = [tokenizer(L, add_special_tokens=False)["input_ids"][0] for L in LETTERS]
    cands = [letter_ids[: len(ex.choices)] if ex.choices else None for ex in items]
    scored = continuation_logprobs(model, tokenizer, prompts, batch_size, max_len, cands, desc="evaluate")
    rows = []
    for ex, (lp, cnt, first) in zip(items, scored):
        correct = None
        if first is not None:
            correct = float(max(range(len(first)), key=lambda k: (first[k], -k)) == ex.gold)
        rows.append(
            {"id": ex.id, "task": ex.task, "capability": ex.capability, "correct": correct, "nll": -lp / max(cnt, 1)}
        )
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Returns per-task rows (task, capability, n, accuracy, nll) plus macro-average and worst task."""
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_task[r["task"]].append(r)
    out = []
    for task in sorted(by_task):
        rs = by_task[task]
        acc = [r["correct"] for r in rs if r["correct"] is not None]
        out.append(
            {
                "task": task,
                "capability": rs[0]["capability"],
                "n": len(rs),
                "accuracy": sum(acc) / len(acc) if acc else None,
                "nll": sum(r["nll"] for r in rs) / len(rs),
            }
        )
    accs = [r["accuracy"] for r in out if r["accuracy"] is not None]
    nlls = [r["nll"] for r in out]
    out.append(
        {
            "task": "macro-average",
            "capability": "all",
            "n": len(rows),
            "accuracy": sum(accs) / len(accs) if accs else None,
            "nll": sum(nlls) / len(nlls),
        }
    )
    out.append(
        {
            "task": "worst-task",
            "capability": "all",
            "n": len(rows),
            "accuracy": min(accs) if accs else None,
            "nll": max(nlls) if nlls else math.nan,
        }
    )
    return out
