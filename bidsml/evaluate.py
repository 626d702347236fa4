"""Evaluation harness: batched log-likelihood scoring, batched generation, sandboxed tests.

Multiple-choice items (MMLU, ARC) are scored from one forward pass over
prompt + gold continuation: the option letter with the highest
log-probability after the prompt wins, and the same pass gives the gold
NLL (mean per-token negative log-likelihood, a smooth metric that small
models still move). Generation items (GSM8K, HumanEval, MBPP, BBH) are
decoded greedily in left-padded batches with a KV cache and stop sequences;
code runs in `bidsml.sandbox`. See `bidsml.benchmarks` for the protocols.

Two ways scoring avoids recomputing what it already knows: prompts sharing a
few-shot prefix encode it once (`prefix_groups`), and, with `TrunkStates`, the
hidden states entering the first LoRA-adapted layer (the "trunk", identical
for the base model and every fine-tune of adapters above it) are computed
once and reused, so each fine-tuned model only runs its adapted top layers.
"""

from __future__ import annotations

import inspect
import re
import warnings
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Callable

import pandas as pd
import torch
from tqdm.auto import tqdm

from bidsml.benchmarks.base import BenchItem
from bidsml.data import chat_prompt, length_batches
from bidsml.sandbox import Limits, run_programs

PREFIX_MIN_TOKENS = 64  # items sharing at least this many prompt tokens reuse one key/value cache of them
TRUNK_TOLERANCE = 1e-3  # max log-prob difference of the trunk path from a full pass on the first batch


@dataclass
class TrunkStates:
    """Hidden states entering decoder layer `layer` for every scored sequence (the shared "trunk").

    Layers below `layer` are the base model's in the base model and in every
    fine-tune whose LoRA adapts only `layer` and above, so these states are the
    same for all of them: computed once (`recorded`), saved, and reused. Scores
    always run the top layers from these states, whether just recorded or
    reused, so an evaluation's scores do not depend on which model recorded them.
    `prefixes[g]` is group g's shared prefix (P, H); `items[i]` item i's own
    tokens after the prefix (S_i, H). `valid` turns False when the trunk path
    disagreed with a full pass (then scoring fell back to full passes).
    """

    layer: int
    prefixes: dict[int, torch.Tensor] = field(default_factory=dict)
    items: dict[int, torch.Tensor] = field(default_factory=dict)
    recorded: bool = False
    valid: bool = True


@torch.no_grad()
def continuation_logprobs(
    model,
    tokenizer,
    pairs: list[tuple[str, str]],
    batch_size: int,
    max_len: int,
    first_token_candidates: list[list[int] | None] | None = None,
    desc: str = "score",
    share_prefix: bool = True,
    trunk: TrunkStates | None = None,
) -> list[tuple[float, int, list[float] | None]]:
    """Returns, per (prompt, continuation): (sum log-prob, token count, candidate log-probs).

    Candidate log-probs are the log-probabilities of the given token ids as
    the FIRST token after the prompt (one forward pass scores a multiple-
    choice item: the options' letters). Prompts are truncated from the left so
    the continuation fits in `max_len`; batches are length-sorted with padding bounded to ~20%.

    With `share_prefix`, prompts that start with the same tokens (an MMLU
    subject's 5 shots, a BBH subtask's 3, GSM8K's 8 exemplars) are grouped;
    each group's common prefix goes through the model once and its key/value
    cache serves every item of the group, which then only computes its own
    suffix (the question and continuation). Scores equal the full passes up
    to float rounding.

    With `trunk` (see `TrunkStates`), the layers below `trunk.layer` run only
    when its states are empty (they are recorded then); every score comes from
    the top layers run on those states. The first batch is also scored with a
    full pass: if they differ by more than TRUNK_TOLERANCE (a model whose
    forward the trunk path does not reproduce), a warning says so, `trunk.valid`
    turns False and every item is scored with full passes.
    """
    device = next(model.parameters()).device
    encoded = []
    for prompt, cont in pairs:
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c = tokenizer(cont, add_special_tokens=False)["input_ids"][: max_len - 1]
        p = p[-(max_len - len(c)) :]
        encoded.append((p, c))
    cands = first_token_candidates or [None] * len(pairs)
    groups = prefix_groups([p for p, _ in encoded]) if share_prefix else [(0, list(range(len(encoded))))]
    pad = tokenizer.pad_token_id
    if trunk is not None:
        if not trunk.items:
            _record_trunk(model, trunk, encoded, groups, batch_size, max_len, pad, device)
        elif sorted(trunk.items) != list(range(len(encoded))) or sorted(trunk.prefixes) != [
            g for g, (shared, _) in enumerate(groups) if shared
        ]:
            raise ValueError("trunk states do not match these items (another item set or prefix grouping)")
    out: list = [None] * len(encoded)
    checked = trunk is None
    bar = tqdm(total=len(encoded), desc=desc, leave=False)
    for g, (shared, members) in enumerate(groups):
        if trunk is None:
            cache = _prefix_cache(model, encoded[members[0]][0][:shared], device) if shared else None
        else:
            cache = _top_prefix_cache(model, trunk.layer, trunk.prefixes[g].to(device)) if shared else None
        lengths = [len(encoded[i][0]) + len(encoded[i][1]) - shared for i in members]
        for sub in length_batches(lengths, batch_size * max_len, batch_size):
            idx = [members[j] for j in sub]
            if trunk is None:
                hidden = _full_hidden_states(model, encoded, idx, shared, cache, pad, device)
            else:
                hidden = _top_hidden_states(model, trunk.layer, [trunk.items[i] for i in idx], shared, cache, device)
            _score_rows(model, hidden, idx, encoded, shared, cands, out, device)
            if not checked:  # the trunk path against a full pass, once per call
                checked = True
                ref: list = [None] * len(encoded)
                full_cache = _prefix_cache(model, encoded[members[0]][0][:shared], device) if shared else None
                hidden = _full_hidden_states(model, encoded, idx, shared, full_cache, pad, device)
                _score_rows(model, hidden, idx, encoded, shared, cands, ref, device)
                diff = max(_score_difference(out[i], ref[i]) for i in idx)
                if diff > TRUNK_TOLERANCE:
                    warnings.warn(
                        f"shared-trunk scoring differs from a full pass by {diff:.2g} (> {TRUNK_TOLERANCE}) on this "
                        "model: scoring every item with full passes instead (slower; the trunk is not reused)",
                        stacklevel=2,
                    )
                    trunk.valid = False
                    bar.close()
                    return continuation_logprobs(
                        model, tokenizer, pairs, batch_size, max_len, first_token_candidates, desc, share_prefix
                    )
            bar.update(len(idx))
    bar.close()
    return out


def _score_rows(model, hidden, idx, encoded, shared, cands, out, device) -> None:
    """Fills out[i] = (sum log-prob, token count, candidate log-probs) for the batch rows of items `idx`."""
    for b, i in enumerate(idx):
        p, c = encoded[i]
        start = len(p) - shared  # suffix position of the first continuation token
        logits = _lm_head(model)(hidden[b, start - 1 : start + len(c) - 1])
        logp = torch.log_softmax(logits.float(), dim=-1)  # (len(c), V)
        total = logp[torch.arange(len(c)), torch.tensor(c, device=device)].sum().item()
        first = logp[0, cands[i]].tolist() if cands[i] else None
        out[i] = (total, len(c), first)


def _score_difference(a, b) -> float:
    return max([abs(a[0] - b[0])] + [abs(x - y) for x, y in zip(a[2] or [], b[2] or [])])


def _suffix_ids(encoded, idx, shared, pad) -> torch.Tensor:
    """Returns the right-padded (B, L) token ids of the items' tokens after the shared prefix."""
    seqs = [(encoded[i][0] + encoded[i][1])[shared:] for i in idx]
    ids = torch.full((len(idx), max(map(len, seqs))), pad, dtype=torch.long)
    for b, seq in enumerate(seqs):
        ids[b, : len(seq)] = torch.tensor(seq)
    return ids


def _full_hidden_states(model, encoded, idx, shared, cache, pad, device):
    """Returns the last hidden states (B, L, H) of a batch's suffixes, every layer run (prefix from `cache`)."""
    # Right padding under causal attention: no real token ever attends to a pad, so no attention mask is
    # needed, and without one SDPA takes its fused causal path (a padded mask forces the slow O(L^2) one).
    past = _expand_cache(cache, len(idx)) if cache is not None else None
    return _hidden_states(model, _suffix_ids(encoded, idx, shared, pad).to(device), past)


def prefix_groups(prompts: list[list[int]], min_shared: int = PREFIX_MIN_TOKENS) -> list[tuple[int, list[int]]]:
    """Returns (shared prefix length, item indices) groups covering every prompt once.

    Prompts are sorted by their tokens, so prompts with a long common start
    are neighbours; a run of neighbours sharing >= `min_shared` tokens is one
    group, its prefix the run's common start, cut so that every item keeps at
    least its last prompt token (whose logits score the continuation).
    Prompts with nothing long in common form groups with prefix length 0.
    """
    order = sorted(range(len(prompts)), key=lambda i: prompts[i])
    groups: list[tuple[int, list[int]]] = []
    loose: list[int] = []

    def close(run: list[int], shared: int) -> None:
        shared = min([shared] + [len(prompts[i]) - 1 for i in run])
        if len(run) > 1 and shared >= min_shared:
            groups.append((shared, sorted(run)))
        else:
            loose.extend(run)

    run, shared = [order[0]] if order else [], 0
    for i in order[1:]:
        common = _common_length(prompts[run[-1]], prompts[i])
        new_shared = common if len(run) == 1 else min(shared, common)
        if new_shared >= min_shared:
            run.append(i)
            shared = new_shared
        else:
            close(run, shared)
            run, shared = [i], 0
    if run:
        close(run, shared if len(run) > 1 else 0)
    if loose:
        groups.append((0, sorted(loose)))
    return groups


def _common_length(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for k in range(n):
        if a[k] != b[k]:
            return k
    return n


def _prefix_cache(model, prefix: list[int], device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Returns the per-layer (key, value) tensors (1, heads, P, d) of a prefix."""
    from transformers import DynamicCache

    cache = DynamicCache()
    _causal_lm(model).model(input_ids=torch.tensor([prefix], device=device), **_cache_kw(model, cache), use_cache=True)
    return [(layer.keys, layer.values) for layer in cache.layers]


def _expand_cache(kv: list[tuple[torch.Tensor, torch.Tensor]], batch: int):
    """Returns a fresh cache holding the prefix for `batch` rows (views: the forward appends, never writes in place)."""
    from transformers import DynamicCache

    return DynamicCache([(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in kv])


class _StopForward(Exception):
    """Raised by a forward pre-hook to stop a forward pass at the trunk layer."""


class _Passthrough(torch.nn.Module):
    """A decoder layer that returns its input: stands in for the trunk's layers on the top path."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


def trunk_layer(model, wanted: int | None) -> int | None:
    """Returns the decoder layer whose input states the model shares with the base model, or None.

    `wanted` (the recipe's lowest LoRA layer), lowered to the lowest layer the
    model's own LoRA adapts; None when that is layer 0, when an adapter
    touches anything outside the decoder layers, or when the model's decoder
    is not a `layers` list the top path can run.
    """
    inner = getattr(_causal_lm(model), "model", None)
    if not wanted or inner is None or not isinstance(getattr(inner, "layers", None), torch.nn.ModuleList):
        return None
    if wanted >= len(inner.layers):
        return None
    low = wanted
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and isinstance(module.lora_A, torch.nn.ModuleDict):
            m = re.search(r"\.layers\.(\d+)\.", name)
            if m is None:
                return None
            low = min(low, int(m.group(1)))
    return low or None


def _lower_hidden_states(model, layer: int, ids, cache=None):
    """Returns the hidden states entering decoder `layer` (B, L, H); only the layers below it run (into `cache`)."""
    inner = _causal_lm(model).model
    captured = {}

    def stop(module, args, kwargs):
        captured["h"] = args[0] if args else kwargs["hidden_states"]
        raise _StopForward

    handle = inner.layers[layer].register_forward_pre_hook(stop, with_kwargs=True)
    kw = {**_cache_kw(model, cache), "use_cache": True} if cache is not None else {"use_cache": False}
    try:
        inner(input_ids=ids, **kw)
    except _StopForward:
        pass
    finally:
        handle.remove()
    return captured["h"]


@contextmanager
def _top_layers_only(inner, layer: int):
    """Runs the decoder with its layers below `layer` replaced by passthroughs (restored on exit)."""
    layers = inner.layers
    inner.layers = torch.nn.ModuleList([_Passthrough() for _ in range(layer)] + list(layers)[layer:])
    try:
        yield
    finally:
        inner.layers = layers


def _top_forward(model, layer: int, h, cache, start: int):
    """Returns the last hidden states of `h` (states entering `layer`, positions from `start`) and fills `cache`."""
    inner = _causal_lm(model).model
    pos = torch.arange(start, start + h.shape[1], device=h.device).unsqueeze(0)
    kw = {**_cache_kw(model, cache), "use_cache": True} if cache is not None else {"use_cache": False}
    with _top_layers_only(inner, layer):
        return inner(inputs_embeds=h, position_ids=pos, **kw).last_hidden_state


def _top_prefix_cache(model, layer: int, prefix_states) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Returns the top layers' (key, value) tensors of a prefix from its trunk states (P, H)."""
    from transformers import DynamicCache

    n = len(_causal_lm(model).model.layers)
    cache = DynamicCache([(None, None)] * n)
    _top_forward(model, layer, prefix_states[None], cache, 0)
    return [(lay.keys, lay.values) for lay in cache.layers[layer:]]


def _top_hidden_states(model, layer: int, states: list[torch.Tensor], shared: int, top_kv, device):
    """Returns the last hidden states (B, L, H) of a batch from its rows' trunk states, prefix from `top_kv`."""
    from transformers import DynamicCache

    h = torch.zeros(len(states), max(len(s) for s in states), states[0].shape[-1], dtype=states[0].dtype)
    for b, s in enumerate(states):
        h[b, : len(s)] = s  # right padding: no real token attends to a pad row
    h = h.to(device)
    if top_kv is None:
        cache = None
    else:  # layers below the trunk never read their cache: a (B, 1, P, 1) stand-in only sizes the attention mask
        stand_in = torch.zeros(1, 1, 1, 1, dtype=h.dtype, device=device).expand(len(states), 1, shared, 1)
        cache = DynamicCache(
            [(stand_in, stand_in)] * layer
            + [(k.expand(len(states), -1, -1, -1), v.expand(len(states), -1, -1, -1)) for k, v in top_kv]
        )
    return _top_forward(model, layer, h, cache, shared)


def _record_trunk(model, trunk: TrunkStates, encoded, groups, batch_size, max_len, pad, device) -> None:
    """Fills `trunk` with every group's prefix states and every item's suffix states (layers below it only)."""
    from transformers import DynamicCache

    bar = tqdm(total=len(encoded), desc=f"trunk (layers 0-{trunk.layer - 1})", leave=False)
    for g, (shared, members) in enumerate(groups):
        lower = None
        if shared:
            cache = DynamicCache()
            prefix = torch.tensor([encoded[members[0]][0][:shared]], device=device)
            trunk.prefixes[g] = _lower_hidden_states(model, trunk.layer, prefix, cache)[0].cpu()
            lower = [(lay.keys, lay.values) for lay in cache.layers[: trunk.layer]]
        lengths = [len(encoded[i][0]) + len(encoded[i][1]) - shared for i in members]
        for sub in length_batches(lengths, batch_size * max_len, batch_size):
            idx = [members[j] for j in sub]
            past = _expand_cache(lower, len(idx)) if lower is not None else None
            h = _lower_hidden_states(model, trunk.layer, _suffix_ids(encoded, idx, shared, pad).to(device), past)
            for b, (j, i) in enumerate(zip(sub, idx)):
                trunk.items[i] = h[b, : lengths[j]].cpu().clone()
            bar.update(len(idx))
    bar.close()
    trunk.recorded = True


def _causal_lm(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _hidden_states(model, ids, past=None):
    if past is None:
        return _causal_lm(model).model(input_ids=ids).last_hidden_state
    return _causal_lm(model).model(input_ids=ids, **_cache_kw(model, past), use_cache=True).last_hidden_state


def _cache_kw(model, cache) -> dict:
    """Returns the forward's cache keyword: `cache` (transformers >= 5.2x) or `past_key_values` (before)."""
    params = inspect.signature(_causal_lm(model).model.forward).parameters
    return {"cache" if "cache" in params else "past_key_values": cache}


def _lm_head(model):
    return _causal_lm(model).lm_head


def _tokens(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    stop: list[str],
    max_new_tokens: int,
    batch_size: int,
    max_len: int,
    desc: str = "generate",
) -> list[str]:
    """Returns greedy continuations, cut at the first stop sequence: batched, left-padded, with a KV cache.

    Prompts are truncated from the left to leave room for `max_new_tokens`;
    batches are length-sorted with padding bounded to ~20%.
    """
    device = next(model.parameters()).device
    keep = max(1, max_len - max_new_tokens)
    encoded = [_tokens(tokenizer, p)[-keep:] for p in prompts]
    batches = list(length_batches([len(e) for e in encoded], batch_size * max_len, batch_size))
    out: list[str] = [""] * len(prompts)
    pad = tokenizer.pad_token_id
    for idx in tqdm(batches, desc=desc, leave=False):
        L = max(len(encoded[i]) for i in idx)
        ids = torch.full((len(idx), L), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, i in enumerate(idx):
            ids[b, L - len(encoded[i]) :] = torch.tensor(encoded[i])
            mask[b, L - len(encoded[i]) :] = 1
        gen = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            use_cache=True,
            stop_strings=stop or None,
            tokenizer=tokenizer,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
        )
        for b, i in enumerate(idx):
            text = tokenizer.decode(gen[b, L:], skip_special_tokens=True)
            out[i] = cut_at_stop(text, stop)
    return out


def cut_at_stop(text: str, stop: list[str]) -> str:
    """Returns text up to the first stop sequence."""
    cut = len(text)
    for s in stop:
        k = text.find(s)
        if k >= 0:
            cut = min(cut, k)
    return text[:cut]


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def final_number(text: str) -> str | None:
    """Returns the answer number of a chain of thought: after 'the answer is' if present, else the last number."""
    m = re.search(r"answer is\s*\$?(-?\d[\d,]*(?:\.\d+)?)", text, flags=re.I)
    nums = [m.group(1)] if m else _NUMBER.findall(text)
    if not nums:
        return None
    n = nums[-1].replace(",", "").rstrip(".")
    if "." in n:
        n = n.rstrip("0").rstrip(".")
    return n


def score_generation(item: BenchItem, text: str) -> float:
    """Returns 1.0 when a generated answer matches (GSM8K: final number; BBH: first line, exact), else 0.0."""
    if item.answer_rule == "final_number":
        return float(final_number(text) in item.answers)
    return float(text.strip() in item.answers)


def program(item: BenchItem, completion: str) -> str:
    """Returns the program that tests a code completion."""
    return item.code_prefix + completion + item.code_suffix


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


def summarize(rows: list[dict]) -> list[dict]:
    """Returns summary rows (level, name, capability, metric, n, score, nll).

    Levels: `task` (subject / subtask), `benchmark` (its standard metric,
    micro-averaged over its items), `capability` (mean of its benchmarks),
    and `overall`: macro-average over benchmarks and the worst benchmark.
    """
    df = pd.DataFrame(rows)
    out = []
    for (bench, task), g in df.groupby(["benchmark", "task"], sort=True):
        if task != bench:
            out.append(_row("task", f"{bench}/{task}", g))
    bench_rows = []
    for bench, g in df.groupby("benchmark", sort=True):
        bench_rows.append(_row("benchmark", bench, g))
    out += bench_rows
    b = pd.DataFrame(bench_rows)
    for cap, g in b.groupby("capability", sort=True):
        out.append(
            {
                "level": "capability",
                "name": cap,
                "capability": cap,
                "metric": "mean of benchmarks",
                "n": int(g["n"].sum()),
                "score": float(g["score"].mean()),
                "nll": float(g["nll"].mean()),
            }
        )
    out.append(
        {
            "level": "overall",
            "name": "macro-average",
            "capability": "all",
            "metric": "mean of benchmarks",
            "n": int(b["n"].sum()),
            "score": float(b["score"].mean()),
            "nll": float(b["nll"].mean()),
        }
    )
    worst = b.loc[b["score"].idxmin()]
    out.append(
        {
            "level": "overall",
            "name": "worst-task",
            "capability": worst["capability"],
            "metric": f"min over benchmarks ({worst['name']})",
            "n": int(worst["n"]),
            "score": float(worst["score"]),
            "nll": float(b["nll"].max()),
        }
    )
    return out


def _row(level: str, name: str, g: pd.DataFrame) -> dict:
    return {
        "level": level,
        "name": name,
        "capability": g["capability"].iloc[0],
        "metric": g["metric"].iloc[0],
        "n": len(g),
        "score": float(g["score"].mean()),
        "nll": float(g["nll"].mean()),
    }
