"""Per-example LoRA gradient features (LESS step 2), batched and exact.

For a LoRA linear y = W x (W is lora_A or lora_B), the gradient of example
b's loss is sum_t outer(dL_b/dy[b, t], x[b, t]). Forward hooks keep each LoRA
linear's input, tensor hooks its output gradient, and one backward of
sum_b loss_b gives every example's gradient at once; examples do not interact
(causal attention, right padding), so this equals batch size 1. Each module's
per-example gradient goes through the Adam transform with that module's own
optimizer state, is projected into the sketch, and is freed.
Logits are computed only at label positions.

All warmup checkpoints are featurized in one pass over the tokenized data:
each micro-batch is collated and moved to the device once, then every
checkpoint's LoRA weights are copied into the adapter in turn. On GPU the
forward can run under bf16/fp16 autocast; per-example gradients, the Adam
transform and the sketch stay fp32 (fp16 uses a fixed loss scale).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from bidsml.data.examples import IGNORE_INDEX, Tokenized, collate, iter_batches
from bidsml.errors import FeatureError
from bidsml.gradients.projection import Projector
from bidsml.training.trunk import lower_states, top_hidden


@dataclass(frozen=True)
class AdamTransform:
    """LESS's Adam transform: m' = b1 m + (1-b1) g; v' = b2 v + (1-b2) g^2; G = m'/sqrt(v'+eps)."""

    states: dict[str, dict[str, torch.Tensor]]  # param name -> {"exp_avg", "exp_avg_sq"}
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    eps_inside_sqrt: bool = True

    def __call__(self, name: str, g: torch.Tensor) -> torch.Tensor:
        """Returns the transformed per-example gradients g: (B, *param shape)."""
        st = self.states.get(name)
        if st is None:
            raise FeatureError(f"no optimizer state for LoRA parameter {name!r} in the warmup checkpoint")
        m = self.beta1 * st["exp_avg"].to(g) + (1 - self.beta1) * g
        v = self.beta2 * st["exp_avg_sq"].to(g) + (1 - self.beta2) * g * g
        if self.eps_inside_sqrt:
            return m / torch.sqrt(v + self.eps)
        return m / (torch.sqrt(v) + self.eps)


def lora_linears(model) -> list[tuple[str, torch.nn.Linear]]:
    """Returns (parameter name of the weight, module) for every trainable LoRA A/B linear, sorted by name."""
    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and (".lora_A." in name + "." or ".lora_B." in name + "."):
            if mod.weight.requires_grad:
                out.append((f"{name}.weight", mod))
    if not out:
        raise FeatureError("model has no trainable LoRA linears (lora_A / lora_B)")
    return sorted(out, key=lambda x: x[0])


def _label_logits_loss(model, ids, mask, labels, trunk: tuple[int, torch.Tensor] | None = None) -> torch.Tensor:
    """Returns per-example mean token cross-entropy (B,), with logits only at label positions.

    `trunk` = (layer, states entering it): only the layers from `layer` on run (bidsml/training/trunk.py).
    """
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    if trunk is not None:
        hidden = top_hidden(model, trunk[0], trunk[1], mask)
    else:
        hidden = causal_lm.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, H)
    target = labels[:, 1:]  # token t+1 is predicted from position t
    b_idx, t_idx = (target != IGNORE_INDEX).nonzero(as_tuple=True)
    logits = causal_lm.lm_head(hidden[b_idx, t_idx]).float()  # (n_label, V)
    tok_loss = torch.nn.functional.cross_entropy(logits, target[b_idx, t_idx], reduction="none")
    B = ids.shape[0]
    sums = torch.zeros(B, device=ids.device).index_add_(0, b_idx, tok_loss)
    counts = torch.zeros(B, device=ids.device).index_add_(0, b_idx, torch.ones_like(tok_loss))
    return sums / counts


PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FP16_LOSS_SCALE = 2.0**12  # keeps fp16 activation gradients above underflow; divided out in fp32


def resolve_precision(precision: str, device: torch.device) -> str:
    """Returns the forward precision: 'auto' is bfloat16 on CUDA (float16 without bf16 support), float32 on CPU."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"


def _autocast(device: torch.device, precision: str):
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=PRECISIONS[precision])


@dataclass(frozen=True)
class CheckpointState:
    """One warmup checkpoint: its LoRA weights (param name -> tensor; None keeps the model's) and its transform."""

    weights: dict[str, torch.Tensor] | None
    transform: Callable[[str, torch.Tensor], torch.Tensor] | None


def per_example_grads(
    model,
    ids,
    mask,
    labels,
    names: list[str] | None = None,
    precision: str = "float32",
    trunk: tuple[int, torch.Tensor] | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yields (param name, per-example gradient (B, out, in), fp32) for every LoRA linear.

    `names` (the batch's example ids) only serve error messages. `precision`
    is the forward's autocast dtype; gradients are accumulated in fp32.
    """
    mods = lora_linears(model)
    inputs: dict[str, torch.Tensor] = {}
    gouts: dict[str, torch.Tensor] = {}
    handles = []

    def hook(name):
        def fwd(mod, args, out):
            inputs[name] = args[0].detach()
            out.register_hook(lambda g: gouts.__setitem__(name, g.detach()))

        return fwd

    for name, mod in mods:
        handles.append(mod.register_forward_hook(hook(name)))
    scale = FP16_LOSS_SCALE if precision == "float16" else 1.0
    try:
        with _autocast(ids.device, precision):
            losses = _label_logits_loss(model, ids, mask, labels, trunk)
        if not torch.isfinite(losses).all():
            rows = (~torch.isfinite(losses)).nonzero().flatten().tolist()
            raise FeatureError(f"non-finite loss for examples {[names[r] for r in rows] if names else rows}")
        (losses.sum() * scale).backward()
    finally:
        for h in handles:
            h.remove()
    for name, _ in mods:
        x, g = inputs.pop(name), gouts.pop(name)
        # (B, T, out) x (B, T, in) -> (B, out, in); fp32 accumulation
        grad = torch.einsum("bto,bti->boi", g.float(), x.float())
        yield name, grad / scale if scale != 1.0 else grad
    model.zero_grad(set_to_none=True)


def compute_features(
    model,
    items: list[Tokenized],
    projector: Projector,
    pad_id: int,
    transform: Callable[[str, torch.Tensor], torch.Tensor] | None,
    max_tokens: int,
    precision: str = "float32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (L2-normalised projected features (N, k) fp32, norms (N,) fp32) in item order.

    `transform` is the Adam transform for training examples, None for
    validation examples (plain gradient, "sgd"). Uses the model's current adapter.
    """
    ckpt = CheckpointState(weights=None, transform=transform)
    return compute_features_checkpoints(model, items, projector, pad_id, [ckpt], max_tokens, precision)[0]


def compute_features_checkpoints(
    model,
    items: list[Tokenized],
    projector: Projector,
    pad_id: int,
    checkpoints: Sequence[CheckpointState],
    max_tokens: int,
    precision: str = "float32",
    trunk_layer: int | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Returns, per checkpoint, (normalised features (N, k) fp32, norms (N,) fp32), in one pass over the data.

    Each micro-batch is collated and moved to the device once; every
    checkpoint's LoRA weights are then copied into the model's adapter in turn.
    `trunk_layer` (the first adapted layer): the states entering it are computed once per micro-batch and every
    checkpoint runs only the layers from it on.
    """
    device = next(model.parameters()).device
    params = dict(lora_linears(model))
    for it in items:
        if it.n_label_tokens == 0:
            raise FeatureError(f"example {it.id!r} has an empty label mask")
    for ck in checkpoints:
        missing = sorted(set(params) - set(ck.weights)) if ck.weights is not None else []
        if missing:
            raise FeatureError(f"checkpoint has no weights for LoRA parameter {missing[0]!r}")
    feats = [torch.zeros(len(items), projector.dim) for _ in checkpoints]
    for batch_idx in iter_batches(items, max_tokens):
        ids, mask, labels = (t.to(device) for t in collate([items[i] for i in batch_idx], pad_id))
        ids_of_batch = [items[i].id for i in batch_idx]
        trunk = None
        if trunk_layer is not None:
            with _autocast(ids.device, precision):
                trunk = (trunk_layer, lower_states(model, trunk_layer, ids, mask))
        for c, ck in enumerate(checkpoints):
            if ck.weights is not None:
                with torch.no_grad():
                    for name, mod in params.items():
                        mod.weight.copy_(ck.weights[name])
            sketch = torch.zeros(len(batch_idx), projector.dim, device=device)
            for name, g in per_example_grads(model, ids, mask, labels, ids_of_batch, precision, trunk):
                if ck.transform is not None:
                    g = ck.transform(name, g)
                g = g.flatten(1)
                if not torch.isfinite(g).all():
                    bad = [ids_of_batch[r] for r in (~torch.isfinite(g).all(1)).nonzero().flatten().tolist()]
                    raise FeatureError(f"non-finite gradient for parameter {name!r} in examples {bad}")
                projector.add_into(sketch, name, g)
            feats[c][batch_idx] = sketch.cpu()
    out = []
    for f in feats:
        norms = f.norm(dim=1)
        out.append((f / norms.clamp_min(1e-30)[:, None], norms))
    return out


def reference_flat_grads(model, item: Tokenized, pad_id: int) -> dict[str, torch.Tensor]:
    """Returns one example's LoRA gradients by plain batch-size-1 autograd (the test reference)."""
    device = next(model.parameters()).device
    ids, mask, labels = (t.to(device) for t in collate([item], pad_id))
    named = dict(lora_linears(model))
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    grads = {n: m.weight.grad.detach().clone() for n, m in named.items()}
    model.zero_grad(set_to_none=True)
    return grads
