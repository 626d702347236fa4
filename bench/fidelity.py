"""Influence fidelity against the projection dimension k, on a run's own warmup checkpoints and data.

    python bench/fidelity.py --recipe recipes/experiment-cpu.yaml     # after a run of that recipe
    python bench/fidelity.py --recipe recipes/demo.yaml --ks 256 1024 8192 65536

The exact (unprojected) Adam-transformed gradients of a seeded sample of pool
rows and of every validation example are computed once with the run's warmup
checkpoints; each k then only projects them (SJLT, the recipe's projection
seed). Per k it reports the Spearman correlation of projected vs exact
task-mean influence (the worst task and the median over tasks), against the
spread of the exact scores. The last line is JSON: {"k": [...],
"worst_task_spearman": [...], "median_task_spearman": [...], ...}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # run as a script from anywhere

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bidsml.config import load_recipe  # noqa: E402
from bidsml.data.examples import tokenize_all  # noqa: E402
from bidsml.gradients.features import CheckpointState, compute_features_checkpoints, lora_linears  # noqa: E402
from bidsml.gradients.fidelity import fidelity_table  # noqa: E402
from bidsml.model import load_tokenizer  # noqa: E402
from bidsml.gradients.projection import ExactProjector, make_projector  # noqa: E402
from bidsml.gradients.checkpoints import feature_model  # noqa: E402
from storage.checkpoints import load_checkpoints  # noqa: E402
from storage.datasets import load_split  # noqa: E402
from storage.refs import load_ref  # noqa: E402
from storage.runs import load_run, run_ref  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", required=True)
    ap.add_argument("--run", default="latest", help="run record (id prefix) whose data and warmup to use")
    ap.add_argument("--data-dir", help="a data artifact folder (instead of a run record)")
    ap.add_argument("--warmup-dir", help="a warmup artifact folder (instead of a run record)")
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--ks", type=int, nargs="+", default=[1024, 8192, 32768, 131072])
    args = ap.parse_args()
    recipe = load_recipe(args.recipe)
    if args.data_dir and args.warmup_dir:
        data, warm = load_ref(Path(args.data_dir)), load_ref(Path(args.warmup_dir))
    else:
        record = load_run(Path(recipe.run_root).resolve(), args.run)
        data, warm = (run_ref(record, k) for k in ("data", "warmup"))
    t0 = time.time()
    pool, val = load_split(data, "train"), load_split(data, "val")
    rows = np.sort(np.random.default_rng(0).choice(len(pool), min(args.rows, len(pool)), replace=False))
    tok = load_tokenizer(recipe.model)
    train_items, _ = tokenize_all(tok, [pool[i] for i in rows], recipe.model.max_seq_length)
    val_items, _ = tokenize_all(tok, val, recipe.model.max_seq_length)
    model, states, precision = feature_model(recipe.model, recipe.features, warm.path, load_checkpoints(warm))
    weights = [c["weight"] for c in load_checkpoints(warm)]
    shapes = {n: tuple(m.weight.shape) for n, m in lora_linears(model)}
    exact = ExactProjector(shapes)
    mt = recipe.features.max_tokens
    # full gradients once, per checkpoint (normalised: a linear projection of a unit vector, renormalised,
    # gives the same cosine as projecting the raw gradient)
    tr = [
        f for f, _ in compute_features_checkpoints(model, train_items, exact, tok.pad_token_id, states, mt, precision)
    ]
    plain = [CheckpointState(s.weights, None) for s in states]
    va = [f for f, _ in compute_features_checkpoints(model, val_items, exact, tok.pad_token_id, plain, mt, precision)]
    grad_s = time.time() - t0
    tasks = [e.task for e in val]
    exact_A = sum(w * (t.double() @ v.double().T).numpy() for w, t, v in zip(weights, tr, va))

    def blocks(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: x[:, exact.offsets[n] : exact.offsets[n] + int(np.prod(s))] for n, s in shapes.items()}

    out = {"k": [], "worst_task_spearman": [], "median_task_spearman": [], "median_column_spearman": []}
    for k in args.ks:
        proj = make_projector("sjlt", k, recipe.features.proj_seed, shapes)
        A = np.zeros_like(exact_A)
        for w, t, v in zip(weights, tr, va):
            pt = torch.nn.functional.normalize(proj.project(blocks(t)), dim=1)
            pv = torch.nn.functional.normalize(proj.project(blocks(v)), dim=1)
            A += w * (pt.double() @ pv.double().T).numpy()
        table = fidelity_table(A, exact_A, tasks)
        per_task = [r["spearman"] for r in table if r["task"] != "all"]
        out["k"].append(k)
        out["worst_task_spearman"].append(round(min(per_task), 4))
        out["median_task_spearman"].append(round(float(np.median(per_task)), 4))
        out["median_column_spearman"].append(round(table[-1]["column_spearman_median"], 4))
        print(f"k={k}: worst task {min(per_task):.3f}, median task {np.median(per_task):.3f}", file=sys.stderr)
    out |= {
        "D": exact.total,
        "rows": len(rows),
        "columns": len(val),
        "exact_task_mean_std": round(float(np.median([r["exact_std"] for r in table if r["task"] != "all"])), 5),
        "gradient_seconds": round(grad_s, 1),
        "recipe": recipe.name,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
