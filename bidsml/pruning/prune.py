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
    """Raised at the first decoder layer: the calibration batch's layer inputs are captured, nothing above runs."""


def _first_layer_inputs(model, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> list[tuple[tuple, dict]]:
    """Returns, per calibration batch, the (args, kwargs) the model passes to its first decoder layer (hidden
    states, the causal mask, rotary position embeddings...), from one forward pass each that stops there."""
    captured = []

    def grab(module, args, kwargs):
        captured.append((args, kwargs))
        raise _Stop

    handle = decoder_layers(model)[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for ids, mask in batches:
            try:
                model(input_ids=ids, attention_mask=mask)
            except _Stop:
                pass
    finally:
        handle.remove()
    return captured


def _with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    """Returns a layer call's (args, kwargs) with its hidden states replaced."""
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


@torch.no_grad()
def wanda_prune(model, sparsity: float, batches: list[torch.Tensor], on_layer=None) -> None:
    """Prunes every decoder linear by Wanda's metric |W| * ||X|| (per output row), layer by layer from the bottom.

    `batches`: (input ids, attention mask) pairs of calibration rows, (B, T) each, right-padded; pad positions are
    left out of the norms. As Wanda's code: the first layer's inputs are captured once; each layer is run on its
    inputs (the outputs of the pruned layers below) to measure its linears' input norms, pruned, then run again
    to give the next layer its inputs. One pass through the stack in all (not one per layer).
    """
    layers = decoder_layers(model)
    calls = _first_layer_inputs(model, batches)
    for i, layer in enumerate(layers):
        linears = layer_linears(layer)
        sq = {n: torch.zeros(m.in_features, dtype=torch.float64) for n, m in linears.items()}
        tokens = sum(int(mask.sum()) for _, mask in batches)
        keep: dict[str, torch.Tensor] = {}

        def hook(name, sq=sq, keep=keep):
            def fn(module, args, output):
                x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
                sq[name] += (x[keep["m"]] ** 2).sum(0).cpu()

            return fn

        handles = [m.register_forward_hook(hook(n)) for n, m in linears.items()]
        try:
            for (args, kwargs), (_, mask) in zip(calls, batches):
                keep["m"] = mask.bool().reshape(-1)
                layer(*args, **kwargs)
        finally:
            for h in handles:
                h.remove()
        for name, lin in linears.items():
            norm = torch.sqrt(sq[name] / max(tokens, 1)).to(lin.weight.dtype)
            metric = lin.weight.data.abs().float() * norm.float()[None, :]
            _zero_lowest(lin.weight.data, metric, int(lin.in_features * sparsity), per_row=True)
        if i + 1 < len(layers):  # the pruned layer's outputs: the next layer's inputs
            nxt = []
            for args, kwargs in calls:
                out = layer(*args, **kwargs)
                nxt.append(_with_hidden(args, kwargs, out[0] if isinstance(out, tuple) else out))
            calls = nxt
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
