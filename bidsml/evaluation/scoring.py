"""Log-likelihood scoring: one forward pass over prompt + continuation gives the gold NLL and, for
multiple-choice items, the option letters' log-probabilities after the prompt."""

from __future__ import annotations

import warnings

import torch
from tqdm.auto import tqdm

from bidsml.data.examples import length_batches
from bidsml.evaluation.model_calls import _hidden_states, _lm_head
from bidsml.evaluation.prefix import _expand_cache, _prefix_cache, _suffix_ids, prefix_groups
from bidsml.evaluation.trunk import TRUNK_TOLERANCE, TrunkStates, _record_trunk, _top_hidden_states, _top_prefix_cache


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

    An empty prompt starts from the tokenizer's BOS token (EOS when it has none), so every token of the
    continuation is scored. Candidate log-probs are the log-probabilities of the given token ids as
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
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"] or [_start_of_text(tokenizer)]
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


def _start_of_text(tokenizer) -> int:
    """Returns the token an empty prompt starts from (a text scored from its beginning): BOS, else EOS."""
    tid = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if tid is None:
        raise ValueError("an empty prompt needs a BOS or EOS token to start from; this tokenizer has neither")
    return tid


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


def _full_hidden_states(model, encoded, idx, shared, cache, pad, device):
    """Returns the last hidden states (B, L, H) of a batch's suffixes, every layer run (prefix from `cache`)."""
    # Right padding under causal attention: no real token ever attends to a pad, so no attention mask is
    # needed, and without one SDPA takes its fused causal path (a padded mask forces the slow O(L^2) one).
    past = _expand_cache(cache, len(idx)) if cache is not None else None
    return _hidden_states(model, _suffix_ids(encoded, idx, shared, pad).to(device), past)
