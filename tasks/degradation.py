"""Step `degradation`: per pool row, how far the pruned model's next-token distributions are from the original's
on the row's instruction (PASER's capability degradation score; bidsml/pruning/degradation.py).

Two forward passes per row, batched and length-sorted; rows are done in blocks of `BLOCK`, each saved as it
finishes, so a killed run resumes at the next block. Also stored per row: the instruction's token count and the
response's length in characters (PASER's per-row cost), so the selector needs nothing else of the models.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bidsml.pruning.degradation import instruction_jsd
from bidsml.model import load_base_model, load_tokenizer
from storage.datasets import load_split
from storage.models import pruned_model_config
from storage.names import DEGRADATION_CHUNKS_DIR, DEGRADATION_PARQUET
from tasks.step import Build, Input, Step

BLOCK = 256  # rows per saved block (the unit of resume)
BATCH = 4  # rows per forward pass (two models x batch x length x vocabulary logits in memory)


def instruction(ex) -> str:
    """Returns the row's instruction: its user turns (PASER's `instruction` + `input`)."""
    return "\n".join(m.content for m in ex.messages if m.role == "user")


def response(ex) -> str:
    """Returns the row's response: its assistant turns (PASER's `output`)."""
    return "\n".join(m.content for m in ex.messages if m.role == "assistant")


def build(b: Build) -> dict:
    """Scores every pool row's instruction under the original and the pruned model; writes one row per pool row."""
    import torch

    recipe = b.recipe
    tok = load_tokenizer(recipe.model)
    original = load_base_model(recipe.model)
    pruned = load_base_model(pruned_model_config(recipe.model, b.inputs["prune"]))
    pool = load_split(b.inputs["data"], "train")
    enc = [tok(instruction(e), truncation=True, max_length=recipe.model.max_seq_length)["input_ids"] for e in pool]
    n_tokens = np.array([len(x) for x in enc])
    chunks = b.work / DEGRADATION_CHUNKS_DIR
    chunks.mkdir(exist_ok=True)
    progress = b.progress("rows")
    device = next(original.parameters()).device
    pad = tok.pad_token_id
    for start in range(0, len(pool), BLOCK):
        path = chunks / f"{start:09d}.npy"
        if path.exists():  # done before a kill: resume after it
            progress.update(min(start + BLOCK, len(pool)), len(pool))
            continue
        rows = np.arange(start, min(start + BLOCK, len(pool)))
        out = np.zeros((len(rows), 2))
        order = rows[np.argsort(n_tokens[rows], kind="stable")]
        for s in range(0, len(order), BATCH):
            idx = order[s : s + BATCH]
            width = int(n_tokens[idx].max())
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                ids[r, : n_tokens[i]] = torch.tensor(enc[i])
                mask[r, : n_tokens[i]] = 1
            total, mean = instruction_jsd(pruned, original, ids.to(device), mask.to(device))
            out[idx - start, 0], out[idx - start, 1] = total.numpy(), mean.numpy()
        np.save(path, out)
        progress.update(rows[-1] + 1, len(pool))
    jsd = np.concatenate([np.load(p) for p in sorted(chunks.glob("*.npy"))])
    table = pd.DataFrame(
        {
            "id": [e.id for e in pool],
            "jsd_sum": jsd[:, 0],
            "jsd_mean": jsd[:, 1],
            "n_tokens": n_tokens,
            "output_chars": [len(response(e)) for e in pool],
        }
    )
    table.to_parquet(b.work / DEGRADATION_PARQUET, index=False)
    for p in chunks.glob("*.npy"):
        p.unlink()
    chunks.rmdir()
    return {
        "rows": len(table),
        "jsd_sum_mean": round(float(table["jsd_sum"].mean()), 5),
        "jsd_mean_mean": round(float(table["jsd_mean"].mean()), 6),
        "by_source": {
            s: round(float(v), 5) for s, v in table.groupby([e.source for e in pool])["jsd_sum"].mean().items()
        },
    }


STEP = Step(
    name="degradation",
    doc="Per pool row: the JSD between the pruned and the original model on its instruction (PASER's input).",
    inputs=(Input("data"), Input("prune")),
    sections=("model",),  # the original model; the pruned one is the prune artifact's folder
    run_if=lambda recipe: any("degradation" in _needs(m) for m in recipe.selection.methods),
    pool="gpu",
    build=build,
)


def _needs(method: str) -> tuple[str, ...]:
    from bidsml.selectors import get_selector

    return get_selector(method).needs
