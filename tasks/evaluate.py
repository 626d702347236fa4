"""Step 6: evaluate the base model or a fine-tuned adapter on the benchmarks (bidsml.benchmarks)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch
from prefect import task

from bidsml.benchmarks import BenchItem, benchmark_for, contamination, sample_items
from bidsml.config import Recipe
from bidsml.evaluate import TrunkStates, evaluate_benchmark_items, summarize, trunk_layer
from bidsml.model import load_base_model, load_lora, load_tokenizer
from bidsml.sandbox import Limits
from bidsml.selection import selection_label
from storage.checkpoints import adapter_path
from storage.datasets import load_split
from storage.evaluations import save_evaluation
from storage.refs import ArtifactRef, Plan, check_ref, file_sha256, materialize
from storage.trunk_states import items_digest, library_versions, load_trunk, save_trunk, trunk_bytes, trunk_path
from tasks.common import (
    ArtifactCachePolicy,
    Progress,
    artifact_key,
    code_version,
    logger,
    model_inputs,
    post_table,
    publish,
    ref_inputs,
    run_root,
    run_tag,
)

CODE = code_version(__name__)


def benchmark_inputs(recipe: Recipe) -> dict:
    """Returns, per evaluated benchmark, its item limit, its target settings and the content of its files."""
    out = {}
    for name, limit in recipe.evaluation.benchmarks.items():
        target = recipe.target(name)
        files = benchmark_for(target).files()
        out[name] = {
            "limit": limit,
            "target": target.model_dump(mode="json", exclude={"n_val"}),
            "files": {f: file_sha256(Path(f)) for f in files},
        }
    return out


def plan_evaluate(recipe: Recipe, data: ArtifactRef, adapter: ArtifactRef | None = None) -> Plan:
    return Plan(
        run_root=run_root(recipe),
        kind="evaluation",
        inputs={
            **ref_inputs(data=data, adapter=adapter),
            **model_inputs(recipe),
            "evaluation": recipe.evaluation.model_dump(mode="json", exclude={"benchmarks"}),
            "benchmarks": benchmark_inputs(recipe),
            "seed": recipe.sampling_seed,  # samples the limited items
            "code": CODE,
        },
    )


def model_label(adapter: ArtifactRef | None) -> str:
    if adapter is None:
        return "base"
    return selection_label(adapter.meta["method"], adapter.meta["budget"])


def evaluation_items(recipe: Recipe) -> list[BenchItem]:
    """Returns the scored items: each benchmark of the recipe, limited and spread over its subjects (seeded).

    With `evaluation.generate`, only a seeded subset of a benchmark's items keeps its generation budget.
    """
    items = []
    generate = recipe.evaluation.generate or {}
    for name, limit in recipe.evaluation.benchmarks.items():
        chosen = sample_items(benchmark_for(recipe.target(name)).items(), limit, recipe.sampling_seed)
        if name in generate:  # a seeded subset is decoded; the rest are scored by their gold NLL
            decoded = {it.id for it in sample_items(chosen, generate[name], recipe.sampling_seed + 1)}
            chosen = [it if it.id in decoded else replace(it, max_new_tokens=0) for it in chosen]
        items += chosen
    return items


@task(cache_policy=ArtifactCachePolicy(plan=plan_evaluate), persist_result=True)
def evaluate(
    recipe: Recipe, data: ArtifactRef, adapter: ArtifactRef | None = None, refresh: bool = False
) -> ArtifactRef:
    """Scores every benchmark (standard metric + gold NLL per item); returns the evaluation artifact.

    The summary also gives the pool / test-item n-gram overlap (decontamination check).
    """
    started = time.time()
    label = model_label(adapter)
    ec = recipe.evaluation

    def build(work: Path) -> dict:
        tok = load_tokenizer(recipe.model)
        model = load_base_model(recipe.model)
        if adapter is not None:
            model = load_lora(model, adapter_path(check_ref(adapter)))
        model.eval()
        items = evaluation_items(recipe)
        trunk, trunk_file = shared_trunk(recipe, model, items)
        t = time.time()
        progress = Progress(artifact_key("evaluate-progress", run_tag(recipe, label)), f"evaluate {label} phases")
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
        trunk_note = keep_trunk(trunk, trunk_file)
        table = summarize(rows)
        contam = contamination(load_split(data, "train"), items, ec.decontamination_ngram)
        summary = {
            "model": label,
            "tasks": table,
            "limits": dict(ec.benchmarks),
            "tasks_per_benchmark": {
                b: sorted({it.task for it in items if it.benchmark == b})
                for b in sorted({it.benchmark for it in items})
            },
            "contamination": contam,
        }
        save_evaluation(work, rows, summary)  # the files hold no timings: equal scores, equal digest
        post_table(
            [r for r in table if r["level"] != "task"],
            key=artifact_key("evaluation", run_tag(recipe, label)),
            description=f"evaluation of {label}",
        )
        return {**summary, "seconds": round(seconds, 1), "trunk": trunk_note}

    ref = materialize(plan_evaluate(recipe, data, adapter), build, force=refresh)
    inputs = [data] + ([adapter] if adapter else [])
    return publish(ref, "evaluate", {"model": label}, inputs, started, tag=run_tag(recipe, label))


def shared_trunk(recipe: Recipe, model, items: list[BenchItem]) -> tuple[TrunkStates | None, Path | None]:
    """Returns the trunk states to score with (saved ones when this model shares them, else empty) and their file.

    (None, None) when the model shares no layers with the base model (LoRA on layer 0, or no `lora.layers`).
    """
    layers = recipe.lora.layers
    layer = trunk_layer(model, min(layers) if layers else None)
    if layer is None:
        return None, None
    ec = recipe.evaluation
    key = {
        **model_inputs(recipe),
        "layer": layer,
        "items": items_digest([(it.id, it.prompt, it.gold_text, str(it.messages)) for it in items]),
        "max_length": ec.max_length,
        "batch_size": ec.batch_size,
        "dtype": str(next(model.parameters()).dtype),
        "device": next(model.parameters()).device.type,
        "threads": torch.get_num_threads(),
        "versions": library_versions(),
        "code": code_version("bidsml.evaluate"),
    }
    path = trunk_path(run_root(recipe), key)
    return load_trunk(path, layer) or TrunkStates(layer=layer), path


def keep_trunk(trunk: TrunkStates | None, path: Path | None) -> str:
    """Saves newly recorded trunk states; returns (and logs) what happened to them, for the step summary."""
    if trunk is None:
        return "not shared (the model adapts layer 0 or every layer)"
    if not trunk.valid:
        note = "not used: the trunk path did not reproduce a full pass on this model (full passes instead)"
        logger().warning(note)
        return note
    size = f"{trunk_bytes(trunk) / 2**20:.0f} MiB"
    if trunk.recorded:
        save_trunk(path, trunk)
        note = f"recorded layers 0-{trunk.layer - 1} once ({size}), saved for the other models: {path.name}"
    else:
        note = f"reused layers 0-{trunk.layer - 1} states ({size}) from {path.name}: only the top layers ran"
    logger().info(f"trunk states: {note}")
    return note
