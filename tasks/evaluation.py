"""Step `evaluation`: the base model or a fine-tuned adapter on the benchmarks (bidsml.evaluation.benchmarks)."""

from __future__ import annotations

import time
from pathlib import Path

from bidsml.evaluation.benchmarks import benchmark_for, contamination
from bidsml.config import target_for
from bidsml.evaluation.aggregate import summarize
from bidsml.evaluation.harness import evaluate_benchmark_items
from bidsml.evaluation.items import evaluation_items
from bidsml.model import load_base_model, load_lora, load_tokenizer
from bidsml.evaluation.sandbox import Limits
from tasks.step import Build, Input, Step
from storage.checkpoints import adapter_path
from storage.datasets import SPLIT_FILES, load_split
from storage.eval_trunk import keep_trunk, shared_trunk
from storage.evaluations import load_evaluation_items, save_evaluation
from storage.refs import check_ref, file_digest_in, file_sha256
from storage.selections import selected_by


def benchmark_inputs(recipe, inputs=None, params=None) -> dict:
    """Returns, per evaluated benchmark, its item limit, its target settings and the content of its files; and the
    pool file's content (the contamination check reads it): not the data artifact's digest, which each independent
    seed's validation draw changes, so the base model is scored once for every seed."""
    out = {}
    for name, limit in recipe.evaluation.benchmarks.items():
        target = target_for(recipe.data, name)
        files = benchmark_for(target).files()
        out[name] = {
            "limit": limit,
            "target": target.model_dump(mode="json", exclude={"n_val"}),
            "files": {f: file_sha256(Path(f)) for f in files},
        }
    pool = file_digest_in(inputs["data"], SPLIT_FILES["train"]) if inputs and "data" in inputs else None
    return {"benchmarks": out, "pool": pool}


def model_label(adapter) -> str:
    if adapter is None:
        return "base"
    return selected_by(adapter).label


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


STEP = Step(
    name="evaluation",
    doc="Evaluates the base model (no adapter) or a fine-tuned adapter on the benchmarks.",
    # the data: its pool file's content counts (benchmark_inputs), not its validation draw
    inputs=(Input("data", hashed=False), Input("finetune", name="adapter", optional=True, labelled=True)),
    # lora.layers: where the trunk states shared by the base model and every adapter end
    sections=("model", "data", "lora", "evaluation", "sampling_seed"),
    ignore={
        "evaluation": ("benchmarks",),
        "data": ("pool", "val_seed"),
        "lora": ("r", "alpha", "dropout", "target_modules"),
    },
    identity=benchmark_inputs,  # per benchmark: its limit, target settings, its files' content; the pool's content
    pool="gpu",
    label=label,
    per_run=False,
    describe=tables,
    build=build,
)
