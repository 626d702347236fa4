"""Step `projection`: the projection size k of the features, chosen from the data (`features.proj_dim: auto`).

Before the pool is featurized, the exact (unprojected) task-mean influence of
the fidelity sample (`features.fidelity_rows` seeded pool rows) at the first
warmup checkpoint is compared with the projected one at k = 2^10 ... 2^17;
the smallest k whose worst task reaches `features.min_fidelity` (Spearman) is
chosen (bidsml/gradients/autoproj.py). A fixed integer k is measured the same
way at that k alone; `exact` needs no measurement. The measurement is saved
(`fidelity_sample.npz`): the diagnostics step reports the features' k from it,
so the sample's exact gradients are computed once per run. Either way the
features store's size is said before anything is written, and a store over
`features.max_store_gb` stops the run here.
"""

from __future__ import annotations

import time

import pandas as pd

from bidsml.gradients.autoproj import CANDIDATE_DIMS, Choice, candidate_table, choose_dim, gb, store_bytes, task_mean_influence
from bidsml.data.examples import tokenize_all
from bidsml.errors import FeatureError
from bidsml.gradients.features import lora_linears
from bidsml.gradients.fidelity import fidelity_sample
from bidsml.influence.plots import plot_projection_fidelity
from bidsml.model import load_tokenizer
from bidsml.gradients.projection import make_projector
from tasks.step import Build, Input, Step
from bidsml.gradients.checkpoints import feature_model
from storage.checkpoints import load_checkpoints
from storage.datasets import load_split
from storage.fidelity_sample import save_measurement
from storage.names import PROJECTION_CANDIDATES, PROJECTION_PLOT, PROJECTION_SAMPLE


def measure(recipe, data, warm, dims: list[int] | None, b: Build) -> tuple[int, dict | None]:
    """Returns (D, the fidelity sample's measurement) at the candidate dims (every k in CANDIDATE_DIMS below D when
    None; none, D alone, when empty): the exact and projected task-mean influence of the sample at the first warmup
    checkpoint, which the diagnostics step reports too (exact gradients computed once, here). None when nothing is
    measured."""
    fc = recipe.features
    model, states, precision = feature_model(recipe.model, recipe.features, warm.path, load_checkpoints(warm))
    shapes = {n: tuple(m.weight.shape) for n, m in lora_linears(model)}
    total = sum(a * c for a, c in shapes.values())
    projectors = {}
    for k in CANDIDATE_DIMS if dims is None else dims:
        if k < total:
            try:
                projectors[k] = make_projector(fc.projector, k, fc.proj_seed, shapes)
            except ValueError as e:  # a dense projector too large at this k
                b.log(f"projection candidate k={k} skipped: {e}", warning=True)
    if not projectors or not fc.fidelity_rows:
        return total, None
    pool, val = load_split(data, "train"), load_split(data, "val")
    rows = fidelity_sample(len(pool), fc.fidelity_rows)
    tok = load_tokenizer(recipe.model)
    train_items, _ = tokenize_all(tok, [pool[i] for i in rows], recipe.model.max_seq_length)
    val_items, _ = tokenize_all(tok, val, recipe.model.max_seq_length)
    b.log(
        f"influence fidelity: exact vs projected influence of {len(rows)} pool rows x {len(val)} validation "
        f"examples (D = {total:,}) at k = {', '.join(str(k) for k in projectors)}"
    )
    progress = b.progress("fidelity sample rows", total=len(rows))
    val_tasks = [e.task for e in val]
    tasks, exact, projected = task_mean_influence(
        model,
        train_items,
        val_items,
        val_tasks,
        states[0],
        projectors,
        tok.pad_token_id,
        fc.max_tokens,
        precision,
        on_rows=lambda done, n: progress.update(done, n),
    )
    columns = [val_tasks.count(t) for t in tasks]
    return total, {"rows": rows, "tasks": tasks, "columns": columns, "exact": exact, "projected": projected}


def build(b: Build) -> dict:
    """Chooses k (or takes the recipe's), says the features store's size, and stops when it exceeds the budget."""
    recipe, data, warm = b.recipe, b.inputs["data"], b.inputs["warmup"]
    fc = recipe.features
    n_rows = len(load_split(data, "train")) + len(load_split(data, "val"))
    n_ckpt = len(load_checkpoints(warm))

    def size(k: int) -> int:
        return store_bytes(n_rows, k, n_ckpt)

    total, rows, measured = None, [], None
    started = time.time()

    def store(choice: Choice) -> str:
        """Says the features store's size; raises FeatureError when it exceeds the budget."""
        line = (
            f"features store: {n_rows:,} rows x k={choice.k:,} x {n_ckpt} checkpoint(s) = {choice.store_gb} GB "
            f"(features.max_store_gb = {fc.max_store_gb})"
        )
        if choice.store_gb > fc.max_store_gb:
            raise FeatureError(f"{line}: too large; raise features.max_store_gb or lower features.proj_dim")
        return line

    if isinstance(fc.proj_dim, int):
        choice = Choice(fc.proj_dim, fc.projector, "set by the recipe (features.proj_dim)", gb(size(fc.proj_dim)))
        store(choice)  # before any gradient
        total, measured = measure(recipe, data, warm, [fc.proj_dim], b)  # the fidelity check at the recipe's k
    elif fc.proj_dim == "exact":
        total, measured = measure(recipe, data, warm, [], b)
        choice = Choice(total, "exact", "features.proj_dim: exact (no projection)", gb(size(total)))
    else:
        total, measured = measure(recipe, data, warm, None, b)
    fidelity_s = round(time.time() - started, 1) if measured else 0.0
    if measured:
        save_measurement(measured, b.work / PROJECTION_SAMPLE)
        b.log(f"influence fidelity measured on {len(measured['rows'])} pool rows in {fidelity_s} s")
        rows = candidate_table(measured["tasks"], measured["exact"], measured["projected"])
    if fc.proj_dim == "auto":
        choice = choose_dim(rows, fc.min_fidelity, total, size, fc.max_store_gb, fc.projector)
    line = store(choice)
    b.log(f"projection k = {choice.k} ({choice.projector}): {choice.reason}")
    b.log(line)
    if choice.warning:
        b.log(choice.warning, warning=True)
    at_k = next((r for r in rows if r["k"] == choice.k), None)
    if rows:
        pd.DataFrame(rows).to_parquet(b.work / PROJECTION_CANDIDATES, index=False)
        plot_projection_fidelity(rows, fc.min_fidelity, choice.k, b.work / PROJECTION_PLOT)
        b.table("projection-candidates", rows, "influence fidelity (Spearman vs exact) per candidate k and task")
    return {
        "k": choice.k,
        "projector": choice.projector,
        "proj_seed": fc.proj_seed,
        "mode": fc.proj_dim if isinstance(fc.proj_dim, str) else "fixed",
        "reason": choice.reason,
        "warning": choice.warning,
        "store_gb": choice.store_gb,
        "D": total,
        "worst_task_fidelity": at_k["worst_task_fidelity"] if at_k else (1.0 if choice.projector == "exact" else None),
        "min_fidelity": fc.min_fidelity,
        "candidates": rows,
        "fidelity_s": fidelity_s,  # what the fidelity check cost (the sample's exact and projected influence)
        "time_note": f"fidelity check {fidelity_s} s" if measured else "",
    }


def report(ref) -> dict:
    """Returns what the run report shows of the projection: the k the features use and the fidelity check's time."""
    return {"proj_dim": ref.meta["k"], "fidelity_s": ref.meta.get("fidelity_s")}


STEP = Step(
    name="projection",
    doc="Chooses the projection size k: the smallest whose influence ranks like the exact one (or the recipe's k).",
    inputs=(Input("data"), Input("warmup")),
    sections=("model", "features"),
    ignore={"features": ("chunk_rows", "threads", "reuse")},  # storage layout, threads and reuse change no choice
    images={"fidelity by k": PROJECTION_PLOT},
    pool="gpu",
    report=report,
    build=build,
)
