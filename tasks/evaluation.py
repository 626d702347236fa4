"""Step `evaluation`: the base model or a fine-tuned adapter on the benchmarks (bidsml.evaluation.benchmarks)."""

from __future__ import annotations

import time
from pathlib import Path

from bidsml.evaluation.benchmarks import benchmark_for, contamination
from bidsml.config import target_for
from bidsml.evaluation.aggregate import summarize
from bidsml.evaluation.harness import evaluate_benchmark_items
from bidsml.evaluation.items import evaluation_items
from bidsml.evaluation.lm_eval_backend import evaluate_lm_eval, identity_of_lm_eval, plan_lm_eval
from bidsml.model import load_base_model, load_lora, load_tokenizer
from bidsml.evaluation.sandbox import Limits
from tasks.step import Build, Input, Step
from storage.checkpoints import adapter_path
from storage.datasets import SPLIT_FILES, load_split
from storage.eval_trunk import keep_trunk, shared_trunk
from storage.evaluations import lm_eval_results, load_evaluation_items, save_evaluation
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
    if recipe.evaluation.backend == "lm-eval":  # lm-eval's version and its task configurations' content
        lm_eval = identity_of_lm_eval(recipe.evaluation, evaluation_items(recipe), _formulations(recipe))
        return {"benchmarks": out, "pool": pool, "lm_eval": lm_eval}
    return {"benchmarks": out, "pool": pool}


def _formulations(recipe):
    """Returns formulation_of(benchmark): the formulation a benchmark's items are scored in."""
    return lambda name: benchmark_for(target_for(recipe.data, name)).formulation(
        recipe.evaluation.formulation.get(name)
    )


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
    items = scored = evaluation_items(recipe)
    t = time.time()
    rows, extra = [], {}
    if ec.backend == "lm-eval":  # lm-eval scores what it has offline tasks for; the rest stays built-in
        run, scored, harness = plan_lm_eval(ec, items, _formulations(recipe))
        b.log(f"lm-eval scores {len(items) - len(scored)} items (+ lm-eval tasks {sorted(run.user)}); "
              f"built-in harness: {len(scored)}")
        rows, aggregate = evaluate_lm_eval(
            model, tok, run, ec.batch_size, ec.max_length, recipe.sampling_seed, ec.max_new_tokens
        )
        extra = {"backend": "lm-eval", "harness": harness, "lm_eval": aggregate}
    trunk_note = None
    if scored:
        trunk, trunk_file = shared_trunk(recipe, b.run_root, model, scored)
        progress = b.progress("phases")
        rows += evaluate_benchmark_items(
            model,
            tok,
            scored,
            ec.batch_size,
            ec.gen_batch_size,
            ec.max_length,
            ec.max_new_tokens,
            Limits(timeout_s=ec.sandbox_timeout_s, cpu_s=int(ec.sandbox_timeout_s) + 1, memory_mb=ec.sandbox_memory_mb),
            on_progress=progress.update,
            trunk=trunk,
        )
        trunk_note = keep_trunk(trunk, trunk_file, b.log)
    seconds = time.time() - t
    contam = contamination(load_split(b.inputs["data"], "train"), items, ec.decontamination_ngram)
    summary = {
        "model": label,
        "limits": dict(ec.benchmarks),
        "tasks_per_benchmark": {
            b: sorted({r["task"] for r in rows if r["benchmark"] == b}) for b in sorted({r["benchmark"] for r in rows})
        },
        "contamination": contam,
        **extra,
    }
    save_evaluation(b.work, rows, summary)  # the files hold no timings: equal scores, equal digest
    return {**summary, "seconds": round(seconds, 1), "trunk": trunk_note}


def label(inputs, params) -> str:
    return model_label(inputs.get("adapter"))


def tables(ref, table) -> dict:
    """Returns {"tasks": per-task, per-benchmark, macro and worst-task rows} aggregated from the scored items, and
    {"lm_eval_table": lm-eval's own aggregates} (empty unless lm-eval scored).

    Read from the items whenever the artifact is used, not stored in it: how results are aggregated is not
    how they are computed, so changing it re-scores nothing.
    """
    rows = [dict(sorted(r.items())) for r in summarize(load_evaluation_items(ref).to_dict("records"))]
    table("evaluation", [r for r in rows if r["level"] != "task"], f"evaluation of {ref.meta.get('model')}")
    lm_eval = lm_eval_results(ref)
    if lm_eval:
        table("lm-eval", lm_eval, f"lm-eval's own aggregates, {ref.meta.get('model')}")
    return {"tasks": rows, "lm_eval_table": lm_eval}


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
    per="branch",
    describe=tables,
    build=build,
)
