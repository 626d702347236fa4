"""The calls into a Hugging Face causal LM that scoring and generation share (hidden states, caches, head)."""

from __future__ import annotations

import inspect


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
