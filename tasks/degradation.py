"""Step `degradation`: per pool row, how far the pruned model's next-token distributions are from the original's
on the row's instruction (PASER's capability degradation score; bidsml/pruning/degradation.py).

Two forward passes per row, batched and length-sorted; rows are done in blocks of `BLOCK`, one task each on the
run's task runner (this process, or Dask workers with `execution.task_runner: dask`, as feature shards), each
saved as it finishes, so a killed run resumes at the next block. Also stored per row: the instruction's token
count and the response's length in characters (PASER's per-row cost), so the selector needs nothing else of the
models.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from bidsml.model import load_base_model, load_tokenizer, torch_threads
from bidsml.pruning.degradation import instruction_jsd
from storage.datasets import SPLIT_FILES, load_split
from storage.models import pruned_model_config
from storage.names import DEGRADATION_CHUNKS_DIR, DEGRADATION_PARQUET
from storage.refs import file_digest_in
from tasks.step import Build, Input, Step, chunks_by_executor, executor

BLOCK = 256  # rows per saved block (the unit of resume)
BATCH = 4  # rows per forward pass (two models x batch x length x vocabulary logits in memory)


def instruction(ex) -> str:
    """Returns the row's instruction: its user turns (PASER's `instruction` + `input`)."""
    return "\n".join(m.content for m in ex.messages if m.role == "user")


def response(ex) -> str:
    """Returns the row's response: its assistant turns (PASER's `output`)."""
    return "\n".join(m.content for m in ex.messages if m.role == "assistant")


_MODELS: dict[tuple, tuple] = {}  # (model settings, pruned folder) -> (tokenizer, original, pruned), per process


def _models(model_cfg, prune):
    """Returns (tokenizer, original, pruned), loaded once per process (a Dask worker keeps them across blocks)."""
    key = (model_cfg.model_dump_json(), str(prune.path))
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = (
            load_tokenizer(model_cfg),
            load_base_model(model_cfg),
            load_base_model(pruned_model_config(model_cfg, prune)),
        )
    return _MODELS[key]


def _encoded(tok, pool, max_len: int) -> list[list[int]]:
    return [tok(instruction(e), truncation=True, max_length=max_len)["input_ids"] for e in pool]


def write_blocks(recipe, data, prune, work: Path, threads: int | None, first: int, end: int) -> int:
    """Computes the unsaved blocks first..end-1 (BLOCK rows each) into work/DEGRADATION_CHUNKS_DIR; returns how
    many. Each block is saved whole (written aside, then renamed): a killed run resumes at the first unsaved one."""
    import torch

    chunks = work / DEGRADATION_CHUNKS_DIR
    todo = [k for k in range(first, end) if not (chunks / f"{k * BLOCK:09d}.npy").exists()]
    if not todo:
        return 0
    pool = load_split(data, "train")
    with torch_threads(threads):
        tok, original, pruned = _models(recipe.model, prune)
        enc = _encoded(tok, pool, recipe.model.max_seq_length)
        n_tokens = np.array([len(x) for x in enc])
        device = next(original.parameters()).device
        for k in todo:
            rows = np.arange(k * BLOCK, min((k + 1) * BLOCK, len(pool)))
            out = np.zeros((len(rows), 2))
            order = rows[np.argsort(n_tokens[rows], kind="stable")]
            for s in range(0, len(order), BATCH):
                idx = order[s : s + BATCH]
                width = int(n_tokens[idx].max())
                ids = torch.full((len(idx), width), tok.pad_token_id, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for r, i in enumerate(idx):
                    ids[r, : n_tokens[i]] = torch.tensor(enc[i])
                    mask[r, : n_tokens[i]] = 1
                total, mean = instruction_jsd(pruned, original, ids.to(device), mask.to(device))
                out[idx - rows[0], 0], out[idx - rows[0], 1] = total.numpy(), mean.numpy()
            path = chunks / f"{rows[0]:09d}.npy"
            path.with_suffix(".json").write_text(json.dumps(executor()))  # who computed it (the step's summary)
            with open(path.with_suffix(".tmp"), "wb") as fh:
                np.save(fh, out)
            path.with_suffix(".tmp").replace(path)
    return len(todo)


def block_name(recipe, data, prune, work, threads, first: int, end: int) -> str:
    return f"degradation rows {first * BLOCK}-{end * BLOCK - 1}"


def build(b: Build) -> dict:
    """Scores every pool row's instruction under the original and the pruned model, block by block on the task
    runner (this process or Dask workers); writes one row per pool row."""
    recipe, data, prune = b.recipe, b.inputs["data"], b.inputs["prune"]
    pool = load_split(data, "train")
    chunks = b.work / DEGRADATION_CHUNKS_DIR
    chunks.mkdir(exist_ok=True)
    n_blocks = -(-len(pool) // BLOCK)
    threads = b.execution.threads
    blocks = [(recipe, data, prune, b.work, threads, k, k + 1) for k in range(n_blocks)]
    b.map(write_blocks, blocks, name=block_name, progress="degradation blocks")
    write_blocks(recipe, data, prune, b.work, threads, 0, n_blocks)  # what a failed task left undone (normally none)
    jsd = np.concatenate([np.load(chunks / f"{k * BLOCK:09d}.npy") for k in range(n_blocks)])
    tok = load_tokenizer(recipe.model)
    table = pd.DataFrame(
        {
            "id": [e.id for e in pool],
            "jsd_sum": jsd[:, 0],
            "jsd_mean": jsd[:, 1],
            "n_tokens": [len(x) for x in _encoded(tok, pool, recipe.model.max_seq_length)],
            "output_chars": [len(response(e)) for e in pool],
        }
    )
    table.to_parquet(b.work / DEGRADATION_PARQUET, index=False)
    by = chunks_by_executor([json.loads(p.read_text()) for p in sorted(chunks.glob("*.json"))])
    shutil.rmtree(chunks)
    b.log("degradation blocks computed by: " + (", ".join(f"{k}: {v}" for k, v in by.items()) or "none (resumed)"))
    _MODELS.clear()  # the models are not needed after the step
    return {
        "rows": len(table),
        "blocks": n_blocks,
        "blocks_by": by,
        "jsd_sum_mean": round(float(table["jsd_sum"].mean()), 5),
        "jsd_mean_mean": round(float(table["jsd_mean"].mean()), 6),
        "by_source": {
            s: round(float(v), 5) for s, v in table.groupby([e.source for e in pool])["jsd_sum"].mean().items()
        },
    }


def pool_content(recipe, inputs=None, params=None) -> dict:
    """Returns the pool file's content digest: what the scores depend on, not the data artifact's digest, which each
    independent seed's validation draw changes (so one degradation serves every seed of an experiment)."""
    return {"pool": file_digest_in(inputs["data"], SPLIT_FILES["train"]) if inputs and "data" in inputs else None}


STEP = Step(
    name="degradation",
    doc="Per pool row: the JSD between the pruned and the original model on its instruction (PASER's input).",
    inputs=(Input("data", hashed=False), Input("prune")),  # the data: its pool file's content counts (pool_content)
    identity=pool_content,
    sections=("model",),  # the original model; the pruned one is the prune artifact's folder
    run_if=lambda recipe: any("degradation" in _needs(m) for m in recipe.selection.methods),
    pool="gpu",
    build=build,
)


def _needs(method: str) -> tuple[str, ...]:
    from bidsml.selectors import get_selector

    return get_selector(method).needs
