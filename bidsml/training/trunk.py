"""Training and featurization that reuse the frozen trunk: only the LoRA-adapted layers run.

When LoRA adapts only decoder layers >= L (`lora.layers`), the hidden states
entering layer L are the base model's, for every warmup step, every
checkpoint's features and every fine-tune. So:

- training (warmup, fine-tunes, validate's probes) reads them from a trunk of
  the pool's examples, computed once per pool and saved beside the artifacts
  (storage/train_trunk.py), and runs layers >= L, the norm and the head;
- featurization computes them once per micro-batch and every checkpoint runs
  only the top layers from them.

Exact up to float rounding: the top path is the model's own forward with the
layers below L replaced by passthroughs and the states given as
`inputs_embeds` (positions 0..T-1, the same attention mask). Before training
the first batch's loss is compared with a full pass; a disagreement turns the
trunk off with a warning.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bidsml.data.examples import IGNORE_INDEX, Tokenized, collate, iter_batches
from bidsml.evaluation.model_calls import _causal_lm
from bidsml.evaluation.trunk import _top_layers_only, trunk_layer

TRUNK_CHECK_TOLERANCE = 1e-4  # max |loss difference| of the top path from a full pass on the first batch


def lower_states(model, layer: int, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Returns the hidden states entering decoder `layer` (B, T, H): only the layers below it run, no gradient."""
    inner = _causal_lm(model).model
    captured = {}

    class _Stop(Exception):
        pass

    def stop(module, args, kwargs):
        captured["h"] = args[0] if args else kwargs["hidden_states"]
        raise _Stop

    handle = inner.layers[layer].register_forward_pre_hook(stop, with_kwargs=True)
    try:
        with torch.no_grad():
            inner(input_ids=ids, attention_mask=mask, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured["h"].detach()


def top_hidden(model, layer: int, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Returns the decoder's last hidden states (B, T, H) from the states entering `layer`."""
    inner = _causal_lm(model).model
    pos = torch.arange(h.shape[1], device=h.device).unsqueeze(0).expand(h.shape[0], -1)
    with _top_layers_only(inner, layer):
        return inner(inputs_embeds=h, attention_mask=mask, position_ids=pos, use_cache=False).last_hidden_state


def top_loss(model, layer: int, h: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Returns the causal-LM training loss (mean token cross-entropy over label tokens) from the states entering
    `layer`: the model's loss, with logits computed only where a label is (most of a small model's head cost)."""
    hidden = top_hidden(model, layer, h, mask)
    target = labels[:, 1:]  # token t+1 is predicted from position t
    b_idx, t_idx = (target != IGNORE_INDEX).nonzero(as_tuple=True)
    logits = _causal_lm(model).lm_head(hidden[b_idx, t_idx]).float()
    return torch.nn.functional.cross_entropy(logits, target[b_idx, t_idx])


@dataclass
class TrainTrunk:
    """The states entering decoder `layer` of a set of examples: row i is `states[offsets[i]:offsets[i+1]]`.

    `states` is a float array (N tokens, H), memory-mapped when the cache is larger than its memory budget.
    """

    layer: int
    states: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def batch(self, rows: list[int], device, dtype) -> torch.Tensor:
        """Returns the rows' states right-padded into (B, T_max, H) (zeros after each row's end)."""
        lengths = [int(self.offsets[r + 1] - self.offsets[r]) for r in rows]
        out = torch.zeros(len(rows), max(lengths), self.states.shape[1], dtype=dtype)
        for b, r in enumerate(rows):
            out[b, : lengths[b]] = torch.from_numpy(np.array(self.states[self.offsets[r] : self.offsets[r + 1]]))
        return out.to(device)


MEMMAP_BYTES = 2 * 2**30  # a trunk larger than this is written to a memory-mapped file as it is computed


def compute_trunk(
    model, layer: int, items: list[Tokenized], pad_id: int, max_tokens: int, on_rows=None, memmap_dir=None
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (states (sum of lengths, H) float32, offsets (N+1,)) of every item, in item order.

    Larger than MEMMAP_BYTES (and `memmap_dir` given): the states are a np.memmap in that folder.
    """
    device = next(model.parameters()).device
    offsets = np.zeros(len(items) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(t.input_ids) for t in items])
    hidden = _causal_lm(model).config.hidden_size
    shape = (int(offsets[-1]), hidden)
    if memmap_dir is not None and shape[0] * shape[1] * 4 > MEMMAP_BYTES:
        import os
        from pathlib import Path

        Path(memmap_dir).mkdir(parents=True, exist_ok=True)
        states = np.lib.format.open_memmap(Path(memmap_dir) / f"building-{os.getpid()}.npy", "w+", np.float32, shape)
    else:
        states = np.zeros(shape, dtype=np.float32)
    done = 0
    for idx in iter_batches(items, max_tokens):
        ids, mask, _ = (t.to(device) for t in collate([items[i] for i in idx], pad_id))
        h = lower_states(model, layer, ids, mask).float().cpu().numpy()
        for b, i in enumerate(idx):
            states[offsets[i] : offsets[i + 1]] = h[b, : offsets[i + 1] - offsets[i]]
        done += len(idx)
        if on_rows is not None:
            on_rows(done, len(items))
    return states, offsets


def training_layer(model, layers: tuple[int, ...] | None) -> int | None:
    """Returns the layer L whose input states the model shares with the base model (None: no trunk to reuse)."""
    return trunk_layer(model, min(layers) if layers else None)


def check_trunk(model, layer: int, items: list[Tokenized], pad_id: int, states: torch.Tensor | None = None) -> float:
    """Returns |loss(top path) - loss(full pass)| on one batch (eval mode, no gradient).

    `states`: the batch's saved trunk states (B, T, H); None computes them here (featurization's own trunk).
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ids, mask, labels = (t.to(device) for t in collate(items, pad_id))
            full = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            h = lower_states(model, layer, ids, mask) if states is None else states
            top = top_loss(model, layer, h, mask, labels)
    finally:
        model.train(was_training)
    return float((full - top).abs())
