"""The shared trunk: hidden states entering the first LoRA-adapted layer, the same for the base model and every
fine-tune of adapters above it, computed once and reused so each fine-tuned model only runs its top layers."""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from bidsml.data.examples import length_batches
from bidsml.evaluation.model_calls import _cache_kw, _causal_lm
from bidsml.evaluation.prefix import _expand_cache, _suffix_ids

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
