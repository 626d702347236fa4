"""Step `probe`: one model of the influence check (`bidsflow validate`): a subset, its fine-tune, its gold NLL.

The subset is an arm of bidsml/validate.py (top / bottom / random / remove-top /
remove-random / half) at k rows; the fine-tune is the run's LoRA with the
settings `bidsflow validate` passes (chosen for k rows by the recipe's tuning
grid, else the run's), seeded by the run's seed plus the probe seed; the evaluation is the gold NLL of every target's
scored items (no decoding). One artifact per probe, content-addressed like
every step: a killed `validate` resumes from the probes already built.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Literal

import pandas as pd
from pydantic import BaseModel, Field

from bidsml.data.examples import tokenize_all
from bidsml.errors import SelectionError
from bidsml.evaluation.harness import evaluate_benchmark_items
from bidsml.evaluation.items import evaluation_items
from bidsml.model import load_base_model, load_lora, load_tokenizer
from bidsml.influence.streamed import row_scores
from bidsml.validate import ARMS, arm_rows, probe_label
from tasks.adapters import train_on_pool_rows
from tasks.step import Build, Input, Step
from storage.checkpoints import adapter_path
from storage.datasets import load_split
from storage.eval_trunk import keep_trunk, shared_trunk
from storage.influence_store import influence_matrix_array, load_influence_tables
from storage.names import EVAL_ITEMS

ROWS_FILE = "rows.json"


class ProbeParams(BaseModel):
    """One probe model: which rows it trains on."""

    arm: Literal[ARMS] = Field(..., description="top, bottom, random, remove-top, remove-random or half.")  # type: ignore[valid-type]
    task: str = Field("", description="The target task whose influence ranks the rows (top, bottom, remove-top).")
    k: int = Field(..., ge=0, description="Rows selected (top, bottom, random) or removed (remove-top/-random).")
    seed: int = Field(
        0, description="Probe seed: the random rows (random, remove-random, half) and the fine-tune's seed offset."
    )
    base: int = Field(0, ge=0, description="Size of the removal arms' random base subset of the pool.")


def scored_items(recipe) -> list:
    """Returns the targets' scored items (the run's evaluation items of every target), gold NLL only."""
    targets = {t.task for t in recipe.data.targets}
    return [replace(it, max_new_tokens=0) for it in evaluation_items(recipe) if it.benchmark in targets]


def build(b: Build) -> dict:
    """Trains the run's fine-tune on the arm's rows and scores the targets' items by gold NLL."""
    recipe, p, infl = b.recipe, b.params, b.inputs["influence"]
    train, val = load_influence_tables(infl.path)
    scores = None
    if p.arm in ("top", "bottom", "remove-top"):
        cols = (val["task"] == p.task).to_numpy()
        if not cols.any():
            raise SelectionError(f"task {p.task!r} has no validation column in the influence store")
        scores = row_scores(influence_matrix_array(infl.path), lambda block: block[:, cols].mean(1))
    rows = arm_rows(p.arm, scores, len(train), p.k, p.seed, p.base)
    tok = load_tokenizer(recipe.model)
    pool_items, _ = tokenize_all(tok, load_split(b.inputs["data"], "train"), recipe.model.max_seq_length)
    # each probe seed its own fine-tune (data order, LoRA init)
    last = train_on_pool_rows(b, pool_items, rows.tolist(), recipe.finetune, recipe.seed + p.seed)
    model = load_lora(load_base_model(recipe.model), adapter_path(b.work)).eval()
    items = scored_items(recipe)
    trunk, trunk_file = shared_trunk(recipe, b.run_root, model, items)
    ec = recipe.evaluation
    scored = evaluate_benchmark_items(
        model, tok, items, ec.batch_size, ec.gen_batch_size, ec.max_length, 0, trunk=trunk
    )
    keep_trunk(trunk, trunk_file, b.log)
    table = pd.DataFrame([{"id": r["id"], "task": r["benchmark"], "nll": r["nll"]} for r in scored])
    table.to_parquet(b.work / EVAL_ITEMS, index=False)
    (b.work / ROWS_FILE).write_text(json.dumps([int(i) for i in rows]))
    return {
        "probe": probe_label(p.arm, p.task, p.seed),
        "arm": p.arm,
        "task": p.task,
        "k": p.k,
        "seed": p.seed,
        "n_train": len(rows),
        "steps": last["step"],
        "mean_nll": {t: round(float(v), 4) for t, v in table.groupby("task")["nll"].mean().items()},
    }


def label(inputs, params: ProbeParams) -> str:
    return probe_label(params.arm, params.task, params.seed)


STEP = Step(
    name="probe",
    doc="One model of the influence check: fine-tunes on an arm's rows (top/bottom/random/removal) and scores the "
    "targets' gold NLL.",
    inputs=(Input("data"), Input("influence")),
    # the run's fine-tune (model, lora, finetune, seed) and its scored items (data targets, evaluation, sampling)
    sections=("model", "data", "lora", "finetune", "evaluation", "seed", "sampling_seed"),
    ignore={"data": ("pool",), "evaluation": ("generate", "gen_batch_size", "max_new_tokens")},
    params=ProbeParams,
    label=label,
    pool="gpu",
    per="call",
    build=build,
)
