"""Unstructured pruning of a causal LM's decoder linears: magnitude and Wanda (Sun et al. 2024).

Both prune every nn.Linear inside the decoder layers (attention and MLP
projections; never the embeddings or the output head), to `sparsity` zeros:
- magnitude: per weight matrix, the smallest |W| (Wanda's magnitude baseline);
- wanda: per output row, the smallest |W_ij| * ||X_j|| (X_j: input feature j
  over the calibration tokens), layer by layer from the bottom, each layer's
  input norms measured with the layers below already pruned (as Wanda's code
  does), on a seeded sample of pool rows.
Ties go to the lower index (a stable sort), so the same model, data and
sparsity give the same mask.
"""

from __future__ import annotations

import torch
from torch import nn


def decoder_layers(model) -> list[nn.Module]:
    """Returns the model's decoder layers, bottom first."""
    return list(model.get_decoder().layers)


def layer_linears(layer: nn.Module) -> dict[str, nn.Linear]:
    """Returns {name: nn.Linear} inside one decoder layer (q/k/v/o and the MLP's projections)."""
    return {name: m for name, m in layer.named_modules() if isinstance(m, nn.Linear)}


def _zero_lowest(weight: torch.Tensor, metric: torch.Tensor, n: int, per_row: bool) -> None:
    """Zeros the `n` entries of lowest metric (per row when `per_row`, else over the whole matrix); ties: lower
    index first."""
    if n <= 0:
        return
    if per_row:
        idx = torch.sort(metric, dim=1, stable=True).indices[:, :n]
        weight.scatter_(1, idx, 0.0)
    else:
        idx = torch.sort(metric.flatten(), stable=True).indices[:n]
        weight.view(-1)[idx] = 0.0


@torch.no_grad()
def magnitude_prune(model, sparsity: float) -> None:
    """Zeros the `sparsity` fraction of smallest-magnitude weights of every decoder linear, matrix by matrix."""
    for layer in decoder_layers(model):
        for lin in layer_linears(layer).values():
            w = lin.weight.data
            _zero_lowest(w, w.abs().float(), int(w.numel() * sparsity), per_row=False)


class _Stop(Exception):
    """Raised after the layer being measured: the layers above it need not run."""


@torch.no_grad()
def wanda_prune(model, sparsity: float, batches: list[torch.Tensor], on_layer=None) -> None:
    """Prunes every decoder linear by Wanda's metric |W| * ||X|| (per output row), layer by layer from the bottom.

    `batches`: (input ids, attention mask) pairs of calibration rows, (B, T) each, right-padded; pad positions are
    left out of the norms. Each layer's input norms come from a forward pass that stops after that layer, with the
    layers below already pruned.
    """
    layers = decoder_layers(model)
    for i, layer in enumerate(layers):
        linears = layer_linears(layer)
        sq = {n: torch.zeros(m.in_features, dtype=torch.float64) for n, m in linears.items()}
        count = {"tokens": 0}
        mask_now: dict[str, torch.Tensor] = {}

        def hook(name, sq=sq, mask_now=mask_now):
            def fn(module, args, output):
                x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
                keep = mask_now["m"].reshape(-1)
                sq[name] += (x[keep] ** 2).sum(0).cpu()

            return fn

        def stop(module, args, output):
            raise _Stop

        handles = [m.register_forward_hook(hook(n)) for n, m in linears.items()]
        handles.append(layer.register_forward_hook(stop))
        try:
            for ids, mask in batches:
                mask_now["m"] = mask.bool()
                count["tokens"] += int(mask.sum())
                try:
                    model(input_ids=ids, attention_mask=mask)
                except _Stop:
                    pass
        finally:
            for h in handles:
                h.remove()
        for name, lin in linears.items():
            norm = torch.sqrt(sq[name] / max(count["tokens"], 1)).to(lin.weight.dtype)
            metric = lin.weight.data.abs().float() * norm.float()[None, :]
            _zero_lowest(lin.weight.data, metric, int(lin.in_features * sparsity), per_row=True)
        if on_layer is not None:
            on_layer(i + 1, len(layers))


def sparsity_of(model) -> float:
    """Returns the share of zero weights over every decoder linear."""
    zeros = total = 0
    for layer in decoder_layers(model):
        for lin in layer_linears(layer).values():
            zeros += int((lin.weight == 0).sum())
            total += lin.weight.numel()
    return zeros / max(total, 1)
