"""Step `selection`: one selection method at one budget; exports the subset as JSONL.

The method is looked up in the selector registry (bidsml.selectors); the
inputs it declares (influence, representations, the pool's fields) are
loaded and passed, with its options (the recipe's selection.options). A
multi-round method (kmq-iterative) is one selection per round: round r > 0
reads round r-1's selection and the fine-tune trained on it (its lineage).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from bidsml.clusters import embeddings_used
from bidsml.config import FeaturesConfig
from bidsml.errors import SelectionError
from bidsml.selection import selection_label, task_means
from bidsml.selectors import DEFAULT_METHOD, SELECTORS, PoolFields, SelectorInputs, get_selector, run_selector
from bidsml.selectors.registry import selector_rounds
from tasks.step import Build, Input, Step
from storage.checkpoints import adapter_path
from storage.datasets import load_split
from storage.degradation import load_degradation
from storage.influence_store import (
    influence_matrix_array,
    load_column_stats,
    load_influence_tables,
    read_influence_rows,
)
from storage.refs import file_sha256
from storage.representations import load_representations
from storage.selections import load_selection_table, save_selection


class SelectionParams(BaseModel):
    """What a person chooses for one selection."""

    method: Literal[tuple(sorted(SELECTORS))] = Field(  # type: ignore[valid-type]
        DEFAULT_METHOD, description="Selection method (a registered selector: random, less, bids, ...)."
    )
    budget: float = Field(0.1, gt=0, description="How much to select: a count (>= 1) or a fraction of the pool (< 1).")
    options: dict[str, Any] = Field(
        {}, description="The method's options (empty: its defaults; the pipeline passes selection.options.<method>)."
    )
    round: int = Field(0, ge=0, description="Multi-round methods (kmq-iterative): which round this selection is.")


def needs_representations(params: SelectionParams | None) -> bool:
    return params is not None and "representations" in get_selector(params.method).needs


def needs_degradation(params: SelectionParams | None) -> bool:
    return params is not None and "degradation" in get_selector(params.method).needs


def later_round(params: SelectionParams | None) -> bool:
    return params is not None and params.round > 0


def rounds_of(params: SelectionParams) -> int:
    """Returns how many rounds the method runs (1 for every single-pass method): the selector's declaration."""
    return selector_rounds(params.method, params.options)


def options_file(recipe, inputs, params: SelectionParams) -> dict:
    """Returns the content hash of an embeddings file the options name (its path alone is not its content)."""
    emb = (params.options or {}).get("embeddings") if params is not None else None
    if emb in (None, "auto", "representations", "field", "sentence"):
        return {}
    return {"embeddings_file": file_sha256(Path(emb))}


def selector_inputs(
    method: str, options: dict, tasks: list[str], infl, reps, data, pool: list | None = None, degradation=None
) -> SelectorInputs:
    """Returns what selector `method` declared it needs, loaded from the artifacts (influence, representations,
    data, degradation refs), with its options. `pool`: the data's pool examples when the caller has read them
    already."""
    sel = get_selector(method)
    inputs = SelectorInputs(tasks=tasks, options=sel.options(**(options or {})))
    if "influence" in sel.needs:
        inputs.influence = influence_matrix_array(infl.path)  # read in row blocks by the selector: out of core
    if "representations" in sel.needs:
        if reps is None:
            raise SelectionError(f"method {method!r} needs the representations artifact (the representations step)")
        inputs.representations = load_representations(reps)
    if "pool" in sel.needs:
        pool = pool if pool is not None else load_split(data, "train")
        inputs.pool = PoolFields.from_examples(pool, where=f"pool of data artifact {data.digest[:12]}")
    if "degradation" in sel.needs:
        if degradation is None:
            raise SelectionError(f"method {method!r} needs the degradation artifact (a recipe with a `prune` section)")
        inputs.degradation = load_degradation(degradation)
    if "text" in sel.needs:
        pool = pool if pool is not None else load_split(data, "train")
        val = load_split(data, "val")
        if len(val) != len(tasks):
            raise SelectionError(f"method {method!r}: {len(val)} validation examples but {len(tasks)} columns")
        inputs.texts = {"train": [example_text(e) for e in pool], "val": [example_text(e) for e in val]}
    return inputs


def example_text(ex) -> str:
    """Returns an example's text: its messages' contents, one per line."""
    return "\n".join(m.content for m in ex.messages)


def round_losses(b: Build, previous: np.ndarray) -> np.ndarray:
    """Returns the mean response NLL of each previous-round row under the fine-tune trained on them."""
    from bidsml.data.examples import tokenize_all
    from bidsml.model import load_base_model, load_lora, load_tokenizer
    from bidsml.represent import response_nll

    recipe = b.recipe
    tok = load_tokenizer(recipe.model)
    pool = load_split(b.inputs["data"], "train")
    items, _ = tokenize_all(tok, [pool[i] for i in previous], recipe.model.max_seq_length)
    model = load_lora(load_base_model(recipe.model), adapter_path(b.inputs["adapter"].path))
    return response_nll(model, items, tok.pad_token_id, recipe.features.max_tokens).numpy()


def composition(
    A_rows: np.ndarray, mean: np.ndarray, std: np.ndarray, constant: np.ndarray, tasks: list[str], sources: list[str]
) -> dict:
    """Returns counts of selected rows by source and by the task each most influences (z-scored over the pool).

    Args:
        A_rows: the selected rows' raw influence (K, M); mean, std, constant: per-column stats over the pool.
        tasks: the M validation task labels; sources: the K selected rows' sources.
    """
    kept = np.flatnonzero(~constant)
    Z = (A_rows[:, kept].astype(np.float64) - mean[kept]) / std[kept]
    means, names = task_means(Z, [tasks[j] for j in kept])
    top_task = [names[i] for i in means.argmax(axis=1)]
    by_source = pd.Series(sources).value_counts().sort_index().to_dict()
    by_task = pd.Series(top_task).value_counts().sort_index().to_dict()
    per_task_mean = dict(zip(names, means.mean(axis=0).round(4).tolist()))
    return {
        "by_source": by_source,
        "by_top_task": by_task,
        "mean_normalized_influence": per_task_mean,
        "top_task": top_task,
    }


def build(b: Build) -> dict:
    """Runs one selection method; writes the ranked table and the JSONL subset; returns the composition."""
    method, budget, infl = b.params.method, b.params.budget, b.inputs["influence"]
    train, val = load_influence_tables(infl.path)
    tasks = val["task"].tolist()
    n = len(train)
    mean, std, constant = load_column_stats(infl.path)
    pool = load_split(b.inputs["data"], "train")
    reps, data = b.inputs.get("representations"), b.inputs["data"]
    inputs = selector_inputs(method, b.params.options, tasks, infl, reps, data, pool, b.inputs.get("degradation"))
    rounds = rounds_of(b.params)
    if rounds > 1:  # one round of a multi-round method (its share of K: the selector's), reading the round before
        r = b.params.round
        inputs.extra = {"round": r}
        if r > 0:
            previous = load_selection_table(b.inputs["previous"])["train_idx"].to_numpy()
            inputs.extra |= {"previous": previous, "losses": round_losses(b, previous)}
            b.log(f"round {r}: mean loss of the {len(previous)} rows so far {inputs.extra['losses'].mean():.4f}")
    rows = run_selector(method, inputs, budget, b.recipe.seed)
    choice = getattr(inputs.options, "embeddings", None)  # kmq, mig: what they clustered
    embeddings = embeddings_used(inputs, choice) if choice is not None else None
    del inputs
    sources = train["source"].to_numpy()
    comp = composition(read_influence_rows(infl.path, rows), mean, std, constant, tasks, sources[rows].tolist())
    table = pd.DataFrame(
        {
            "rank": np.arange(len(rows)),
            "train_idx": rows,
            "id": train["id"].to_numpy()[rows],
            "source": train["source"].to_numpy()[rows],
            "top_task": comp.pop("top_task"),
        }
    )
    summary = {
        "method": method,
        "budget": b.params.budget,
        "k": len(rows),
        **({"round": b.params.round, "rounds": rounds} if rounds > 1 else {}),
        **({"options": b.params.options} if b.params.options else {}),
        **({"embeddings": embeddings} if embeddings else {}),
        "n_pool": int(n),
        "dropped_constant_columns": np.flatnonzero(constant).tolist(),
        **comp,
    }
    save_selection(b.work, table, [pool[i] for i in rows], summary)
    b.table(
        "selection",
        [{"source": s, "selected": int(c)} for s, c in summary["by_source"].items()],
        f"{method} @ {b.params.budget}: composition by source",
    )
    return summary


def label(inputs, params: SelectionParams) -> str:
    return selection_label(params.method, params.budget)


STEP = Step(
    name="selection",
    doc="Selects a subset with one method at one budget.",
    inputs=(
        Input("data"),
        Input("influence"),
        Input("representations", optional=True, when=needs_representations),
        Input("degradation", optional=True, when=needs_degradation),
        # kmq-iterative, rounds > 0: the previous round's selection and the fine-tune trained on it
        Input("selection", name="previous", optional=True, when=later_round, loop=True),
        Input("finetune", name="adapter", optional=True, when=later_round, loop=True),
    ),
    # model, features: read only by a later round (its fine-tune's loss on the rows so far); batching changes nothing
    sections=("model", "features", "seed"),
    ignore={"features": tuple(FeaturesConfig.model_fields)},
    identity=options_file,
    params=SelectionParams,
    label=label,
    per="branch",
    rounds=rounds_of,
    build=build,
)
