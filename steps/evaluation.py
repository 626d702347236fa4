"""Step `evaluation`: the base model or a fine-tuned adapter on the benchmarks (bidsml.benchmarks)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch

from bidsml.benchmarks import BenchItem, benchmark_for, contamination, sample_items
from bidsml.config import target_for
from bidsml.evaluation.aggregate import summarize
from bidsml.evaluation.harness import evaluate_benchmark_items
from bidsml.evaluation.trunk import TrunkStates, trunk_layer
from bidsml.model import load_base_model, load_lora, load_tokenizer
from bidsml.sandbox import Limits
from steps.step import Build, Input, Step
from storage.checkpoints import adapter_path
from storage.datasets import load_split
from storage.evaluations import load_evaluation_items, save_evaluation
from storage.identity import code_identity, model_identity
from storage.refs import check_ref, file_sha256
from storage.selections import selected_by
from storage.trunk_states import items_digest, library_versions, load_trunk, save_trunk, trunk_bytes, trunk_path


def benchmark_inputs(recipe, inputs=None, params=None) -> dict:
    """Returns, per evaluated benchmark, its item limit, its target settings and the content of its files."""
    out = {}
    for name, limit in recipe.evaluation.benchmarks.items():
        target = target_for(recipe.data, name)
        files = benchmark_for(target).files()
        out[name] = {
            "limit": limit,
            "target": target.model_dump(mode="json", exclude={"n_val"}),
            "files": {f: file_sha256(Path(f)) for f in files},
        }
    return {"benchmarks": out}


def model_label(adapter) -> str:
    if adapter is None:
        return "base"
    return selected_by(adapter).label


def evaluation_items(recipe) -> list[BenchItem]:
    """Returns the scored items: each benchmark of the recipe, limited and spread over its subjects (seeded).

    With `evaluation.generate`, only a seeded subset of a benchmark's items keeps its generation budget.
    """
    items = []
    generate = recipe.evaluation.generate or {}
    for name, limit in recipe.evaluation.benchmarks.items():
        chosen = sample_items(benchmark_for(target_for(recipe.data, name)).items(), limit, recipe.sampling_seed)
        if name in generate:  # a seeded subset is decoded; the rest are scored by their gold NLL
            decoded = {it.id for it in sample_items(chosen, generate[name], recipe.sampling_seed + 1)}
            chosen = [it if it.id in decoded else replace(it, max_new_tokens=0) for it in chosen]
        items += chosen
    return items


def build(b: Build) -> dict:
    """Scores every benchmark (standard metric + gold NLL per item); the summary also gives the pool / test-item
    n-gram overlap (decontamination check)."""
    recipe, adapter = b.recipe, b.inputs.get("adapter")
    ec = recipe.evaluation
    label = model_label(adapter)
    tok = load_tokenizer(recipe.model)
    model = load_base_model(recipe.model)
    if adapter is not None:
        model = load_lora(model, adapter_path(check_ref(adapter)))
    model.eval()
    items = evaluation_items(recipe)
    trunk, trunk_file = shared_trunk(recipe, b.run_root, model, items)
    t = time.time()
    progress = b.progress("phases")
    rows = evaluate_benchmark_items(
        model,
        tok,
        items,
        ec.batch_size,
        ec.gen_batch_size,
        ec.max_length,
        ec.max_new_tokens,
        Limits(timeout_s=ec.sandbox_timeout_s, cpu_s=int(ec.sandbox_timeout_s) + 1, memory_mb=ec.sandbox_memory_mb),
        on_progress=progress.update,
        trunk=trunk,
    )
    seconds = time.time() - t
    trunk_note = keep_trunk(trunk, trunk_file, b.log)
    contam = contamination(load_split(b.inputs["data"], "train"), items, ec.decontamination_ngram)
    summary = {
        "model": label,
        "limits": dict(ec.benchmarks),
        "tasks_per_benchmark": {
            b: sorted({it.task for it in items if it.benchmark == b}) for b in sorted({it.benchmark for it in items})
        },
        "contamination": contam,
    }
    save_evaluation(b.work, rows, summary)  # the files hold no timings: equal scores, equal digest
    return {**summary, "seconds": round(seconds, 1), "trunk": trunk_note}


def label(inputs, params) -> str:
    return model_label(inputs.get("adapter"))


def tables(ref, table) -> dict:
    """Returns {"tasks": per-task, per-benchmark, macro and worst-task rows} aggregated from the scored items.

    Read from the items whenever the artifact is used, not stored in it: how results are aggregated is not
    how they are computed, so changing it re-scores nothing.
    """
    rows = [dict(sorted(r.items())) for r in summarize(load_evaluation_items(ref).to_dict("records"))]
    table("evaluation", [r for r in rows if r["level"] != "task"], f"evaluation of {ref.meta.get('model')}")
    return {"tasks": rows}


def shared_trunk(recipe, run_root: Path, model, items: list[BenchItem]) -> tuple[TrunkStates | None, Path | None]:
    """Returns the trunk states to score with (saved ones when this model shares them, else empty) and their file.

    (None, None) when the model shares no layers with the base model (LoRA on layer 0, or no `lora.layers`).
    """
    layers = recipe.lora.layers
    layer = trunk_layer(model, min(layers) if layers else None)
    if layer is None:
        return None, None
    ec = recipe.evaluation
    key = {
        "model": model_identity(recipe.model),
        "layer": layer,
        "items": items_digest([(it.id, it.prompt, it.gold_text, str(it.messages)) for it in items]),
        "max_length": ec.max_length,
        "batch_size": ec.batch_size,
        "dtype": str(next(model.parameters()).dtype),
        "device": next(model.parameters()).device.type,
        "threads": torch.get_num_threads(),
        "versions": library_versions(),
        "code": code_identity("bidsml.evaluation.trunk"),
    }
    path = trunk_path(run_root, key)
    return load_trunk(path, layer) or TrunkStates(layer=layer), path


def keep_trunk(trunk: TrunkStates | None, path: Path | None, log) -> str:
    """Saves newly recorded trunk states; returns (and logs) what happened to them, for the step summary."""
    if trunk is None:
        return "not shared (the model adapts layer 0 or every layer)"
    if not trunk.valid:
        note = "not used: the trunk path did not reproduce a full pass on this model (full passes instead)"
        log(note, warning=True)
        return note
    size = f"{trunk_bytes(trunk) / 2**20:.0f} MiB"
    if trunk.recorded:
        save_trunk(path, trunk)
        note = f"recorded layers 0-{trunk.layer - 1} once ({size}), saved for the other models: {path.name}"
    else:
        note = f"reused layers 0-{trunk.layer - 1} states ({size}) from {path.name}: only the top layers ran"
    log(f"trunk states: {note}")
    return note


STEP = Step(
    name="evaluation",
    doc="Evaluates the base model (no adapter) or a fine-tuned adapter on the benchmarks.",
    inputs=(Input("data"), Input("finetune", name="adapter", optional=True, labelled=True)),
    # lora.layers: where the trunk states shared by the base model and every adapter end
    sections=("model", "data", "lora", "evaluation", "sampling_seed"),
    ignore={"evaluation": ("benchmarks",), "data": ("pool",), "lora": ("r", "alpha", "dropout", "target_modules")},
    identity=benchmark_inputs,  # per benchmark: its limit, target settings and the content of its files
    pool="gpu",
    label=label,
    per_run=False,
    describe=tables,
    build=build,
)
