"""Choosing the projection size k from the data: the smallest k whose influence ranks like the exact one.

The projected influence is a sketch whose cosines carry an error of about
1/sqrt(k); whether that matters depends on how much the exact influence
varies across the pool, which only the data can say. So before the pool is
featurized, the exact (unprojected) task-mean influence of a seeded sample of
pool rows is computed at the first warmup checkpoint and compared, task by
task, with the projected one at every candidate k (2^10 ... 2^17). The
smallest k whose worst task reaches `min_fidelity` (Spearman) is chosen.

Everything streams module by module, so the exact gradient of the whole
adapter is never held: a backward yields each LoRA linear's per-example
gradient in turn, which is Adam-transformed, dotted with the task sums of the
normalised validation gradients of that module, added into each candidate's
sketch, and freed. What is held: the validation task sums (tasks x D float32)
and the sketches (rows x sum(k)). For an 8B model with rank-128 LoRA on every
linear of every layer (D ~ 3.4e8) and 5 tasks that is ~6.7 GB, plus one
module's per-example gradients (micro-batch x 2.4e6 floats).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from bidsml.data.examples import Tokenized, collate, iter_batches
from bidsml.errors import FeatureError
from bidsml.gradients.features import CheckpointState, lora_linears, per_example_grads
from bidsml.gradients.fidelity import task_fidelity_table
from bidsml.gradients.projection import Projector

CANDIDATE_DIMS = tuple(2**j for j in range(10, 18))  # 1,024 ... 131,072


def store_bytes(n_rows: int, k: int, n_checkpoints: int) -> int:
    """Returns the bytes of a features store: float16 features and a float32 norm per row and checkpoint."""
    return n_rows * n_checkpoints * (2 * k + 4)


def _module_grads(model, items: list[Tokenized], pad_id: int, max_tokens: int, precision: str) -> Iterator:
    """Yields (rows of the micro-batch, iterator of (param name, per-example gradient (B, out, in))) per micro-batch."""
    device = next(model.parameters()).device
    for idx in iter_batches(items, max_tokens):
        ids, mask, labels = (t.to(device) for t in collate([items[i] for i in idx], pad_id))
        names = [items[i].id for i in idx]
        yield idx, per_example_grads(model, ids, mask, labels, names, precision)


def task_mean_influence(
    model,
    train: list[Tokenized],
    val: list[Tokenized],
    val_tasks: Sequence[str],
    checkpoint: CheckpointState,
    projectors: dict[int, Projector],
    pad_id: int,
    max_tokens: int,
    precision: str = "float32",
    on_rows: Callable[[int, int], None] | None = None,
) -> tuple[list[str], np.ndarray, dict[int, np.ndarray]]:
    """Returns (tasks, exact (len(train), T), {k: projected (len(train), T)}): each task's mean cosine influence.

    Train rows take the checkpoint's Adam transform, validation rows the plain gradient, as in the features; the
    projected influence normalises the sketches, as the stored features are. Column t is the mean over task t's
    validation examples (the quantity LESS ranks by). Streams module by module (see the module docstring).
    `on_rows(done, total)` is called after each micro-batch of pool rows.
    """
    if checkpoint.weights is not None:
        with torch.no_grad():
            for name, mod in lora_linears(model):
                mod.weight.copy_(checkpoint.weights[name])
    device = next(model.parameters()).device
    tasks = sorted(set(val_tasks))
    col = torch.tensor([tasks.index(t) for t in val_tasks], device=device)
    count = torch.bincount(col, minlength=len(tasks)).double()

    # validation, pass 1: each example's exact gradient norm, and each candidate's normalised sketch per task
    norms = torch.zeros(len(val), dtype=torch.float64, device=device)
    proj_val = {k: torch.zeros(len(tasks), k, dtype=torch.float64, device=device) for k in projectors}
    for idx, grads in _module_grads(model, val, pad_id, max_tokens, precision):
        sq = torch.zeros(len(idx), dtype=torch.float64, device=device)
        sketches = {k: torch.zeros(len(idx), k, device=device) for k in projectors}
        for name, g in grads:
            g = g.flatten(1)
            sq += g.double().pow(2).sum(1)
            for k, p in projectors.items():
                p.add_into(sketches[k], name, g)
        norms[idx] = sq.sqrt()
        for k, s in sketches.items():
            proj_val[k].index_add_(0, col[idx], torch.nn.functional.normalize(s.double(), dim=1))
    if not (norms > 0).all():
        bad = [val[i].id for i in (norms <= 0).nonzero().flatten().tolist()]
        raise FeatureError(f"validation examples {bad} have a zero gradient")
    # validation, pass 2: per module, the task sums of the normalised exact gradients
    exact_val: dict[str, torch.Tensor] = {}
    for idx, grads in _module_grads(model, val, pad_id, max_tokens, precision):
        onehot = torch.zeros(len(tasks), len(idx), dtype=torch.float64, device=device)
        onehot[col[idx], torch.arange(len(idx), device=device)] = 1.0 / norms[idx]
        for name, g in grads:
            part = (onehot @ g.flatten(1).double()).float()
            exact_val[name] = exact_val[name] + part if name in exact_val else part
    # the pool sample: Adam-transformed, one module at a time
    exact = torch.zeros(len(train), len(tasks), dtype=torch.float64)
    projected = {k: torch.zeros(len(train), len(tasks), dtype=torch.float64) for k in projectors}
    done = 0
    for idx, grads in _module_grads(model, train, pad_id, max_tokens, precision):
        dots = torch.zeros(len(idx), len(tasks), dtype=torch.float64, device=device)
        sq = torch.zeros(len(idx), dtype=torch.float64, device=device)
        sketches = {k: torch.zeros(len(idx), k, device=device) for k in projectors}
        for name, g in grads:
            if checkpoint.transform is not None:
                g = checkpoint.transform(name, g)
            g = g.flatten(1)
            if not torch.isfinite(g).all():
                bad = [train[idx[r]].id for r in (~torch.isfinite(g).all(1)).nonzero().flatten().tolist()]
                raise FeatureError(f"non-finite gradient for parameter {name!r} in examples {bad}")
            dots += (g @ exact_val[name].T).double()
            sq += g.double().pow(2).sum(1)
            for k, p in projectors.items():
                p.add_into(sketches[k], name, g)
        exact[idx] = (dots / sq.sqrt().clamp_min(1e-300)[:, None] / count).cpu()
        for k, s in sketches.items():
            unit = torch.nn.functional.normalize(s.double(), dim=1)
            projected[k][idx] = (unit @ proj_val[k].T / count).cpu()
        done += len(idx)
        if on_rows is not None:
            on_rows(done, len(train))
    return tasks, exact.numpy(), {k: p.numpy() for k, p in projected.items()}


def candidate_table(tasks: list[str], exact: np.ndarray, projected: dict[int, np.ndarray]) -> list[dict]:
    """Returns one row per candidate k: the worst task's Spearman (projected vs exact) and each task's."""
    rows = []
    for k in sorted(projected):
        table = task_fidelity_table(tasks, exact, projected[k])
        per_task = {r["task"]: round(r["spearman"], 4) for r in table if r["task"] != "all"}
        worst = min(v if v == v else -1.0 for v in per_task.values())  # nan (a constant column) counts as -1
        rows.append({"k": k, "worst_task_fidelity": worst, **{f"fidelity {t}": v for t, v in per_task.items()}})
    return rows


@dataclass(frozen=True)
class Choice:
    """The projection a features store uses: k (D for exact), the projector, and why."""

    k: int
    projector: str  # a registered projector, or "exact"
    reason: str
    store_gb: float
    warning: str = ""


def gb(n: int) -> float:
    """Returns bytes as GB, 4 significant digits."""
    return float(f"{n / 1e9:.4g}")


def choose_dim(
    rows: list[dict],
    min_fidelity: float,
    total_dim: int,
    store_size: Callable[[int], int],
    max_store_gb: float,
    projector: str,
) -> Choice:
    """Returns the smallest candidate k whose worst-task fidelity is >= min_fidelity and whose store fits.

    No candidate reaches it: exact features (k = D) when they fit `max_store_gb` (fidelity 1 by definition),
    else the best candidate that fits, with a warning. The passing k too large for the budget: FeatureError
    naming `features.max_store_gb`.
    """
    ok = [r for r in rows if r["worst_task_fidelity"] >= min_fidelity]
    if ok:
        k = ok[0]["k"]
        size = store_size(k)
        if size / 1e9 > max_store_gb:
            raise FeatureError(
                f"features.proj_dim auto: the smallest k reaching worst-task fidelity {min_fidelity} is {k}, whose "
                f"features store would be {gb(size)} GB > features.max_store_gb = {max_store_gb}; raise "
                "features.max_store_gb, lower features.min_fidelity, or set features.proj_dim"
            )
        return Choice(
            k,
            projector,
            f"smallest k in {rows[0]['k']}..{rows[-1]['k']} with worst-task fidelity "
            f"{ok[0]['worst_task_fidelity']:.3f} >= {min_fidelity}",
            gb(size),
        )
    best = max(rows, key=lambda r: r["worst_task_fidelity"]) if rows else None
    if rows:
        why = f"no k up to {rows[-1]['k']} reaches worst-task fidelity {min_fidelity}"
        why += f" (best {best['worst_task_fidelity']:.3f} at k={best['k']})"
    else:
        why = f"every candidate k is >= D = {total_dim}"
    exact_size = store_size(total_dim)
    if exact_size / 1e9 <= max_store_gb:
        return Choice(total_dim, "exact", f"{why}; exact features (D = {total_dim}) fit the budget", gb(exact_size))
    fitting = [r for r in rows if store_size(r["k"]) / 1e9 <= max_store_gb]
    if not fitting:
        raise FeatureError(
            f"features.proj_dim auto: {why}, and no candidate's store fits features.max_store_gb = {max_store_gb} "
            f"(exact: {gb(exact_size)} GB); raise features.max_store_gb or set features.proj_dim"
        )
    pick = max(fitting, key=lambda r: (r["worst_task_fidelity"], -r["k"]))
    return Choice(
        pick["k"],
        projector,
        f"{why}; exact features ({gb(exact_size)} GB) exceed features.max_store_gb = {max_store_gb}: "
        f"the most faithful k that fits",
        gb(store_size(pick["k"])),
        warning=f"influence fidelity {pick['worst_task_fidelity']:.3f} < features.min_fidelity = {min_fidelity} at "
        f"k={pick['k']}: rankings are partly projection noise; raise features.max_store_gb to allow exact features",
    )
