"""Benchmark a pool that grows: features + influence for 10% new rows vs a from-scratch pass (not a test).

    python bench/incremental.py                      # recipes/experiment-cpu.yaml's pool, on a quiet 2-core machine
    python bench/incremental.py --recipe recipes/tiny.yaml --new-source sciq --new-n 4    # smoke run

Pool A: the recipe's pool. Its data, warmup, projection, features and influence are built first (not timed).
Pool A+: A plus `--new-n` rows of `--new-source` (a source A does not have: A's own rows keep their order and
content), with A's warmup kept (`warmup.from_run`, as a user grows a pool). Then, side by side in one run on the
same warmup and projection k:

- incremental: the features and influence steps of A+ with reuse (A's rows copied, the new ones computed);
- full: the same two steps of A+ with `features.reuse: false` (every row computed).

`incremental_fraction_of_full` = incremental / full wall time (target <= 0.15); `rows_reused` / `rows_computed`
(pool and validation rows of the features step); `identical_to_full`: the BIDS and LESS selections of the two at
the recipe's first budget are identical, copied rows equal their source bit for bit, and every feature lies
within the batching bound: one fp16 spacing per coordinate (a batch changes a float32 gradient's last bits; the
store keeps fp16), `max_difference_fp16_ulps` measured here.
The last line is JSON; it is appended to bench/results-incremental-cpu.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # this folder's select.py would shadow the stdlib module

import argparse
import json
import os
import tempfile
import time

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("bids", "less")


def _features(ref, split="train", c=0) -> np.ndarray:
    from storage.gradients import read_features

    return read_features(ref.path, split, c).astype(np.float32)


def _ulps(a: np.ndarray, b: np.ndarray) -> float:
    """Returns the largest |a - b| in units of the fp16 spacing at the larger magnitude (features are stored fp16)."""
    spacing = np.spacing(np.maximum(np.abs(a), np.abs(b)).astype(np.float16)).astype(np.float32)
    return float((np.abs(a - b) / spacing).max())


def _select(recipe, data, infl, method: str, budget: float) -> list[int]:
    from flows.step_flows import STEP_FLOWS
    from storage.selections import load_selection_table

    ref = STEP_FLOWS["selection"](
        recipe, inputs={"data": data, "influence": infl}, params={"method": method, "budget": budget}
    )
    return load_selection_table(ref)["train_idx"].tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "experiment-cpu.yaml"))
    ap.add_argument("--new-source", default="math")
    ap.add_argument("--new-n", type=int, default=200)
    ap.add_argument("--k", type=int, default=8192, help="projection dimension (LESS's)")
    ap.add_argument("--run-root", default=None, help="default: a temporary folder")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results-incremental-cpu.json"))
    args = ap.parse_args()

    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="bench-prefect-"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from bidsml.config import load_recipe
    from flows.step_flows import STEP_FLOWS

    run_root = args.run_root or tempfile.mkdtemp(prefix="bench-incremental-")
    base = load_recipe(args.recipe)
    # one k for both pools (auto could choose another for A+); no fidelity check (not what is measured)
    recipe_a = base.with_overrides(
        {"run_root": run_root, "seeds": None, "features.proj_dim": args.k, "features.fidelity_rows": 0}
    )
    pool = [s.model_dump(exclude_none=True) for s in recipe_a.data.pool]
    if any(s["source"] == args.new_source for s in pool):
        raise SystemExit(f"--new-source {args.new_source!r} is already in the pool; name another")
    recipe_b = recipe_a.with_overrides({"data.pool": pool + [{"source": args.new_source, "n": args.new_n}]})
    budget = recipe_a.selection.budgets[0]

    # pool A, untimed: what a user built before
    t0 = time.time()
    data_a = STEP_FLOWS["data"](recipe_a)
    warm = STEP_FLOWS["warmup"](recipe_a, inputs={"data": data_a})
    proj_a = STEP_FLOWS["projection"](recipe_a, inputs={"data": data_a, "warmup": warm})
    feats_a = STEP_FLOWS["features"](recipe_a, inputs={"data": data_a, "warmup": warm, "projection": proj_a})
    STEP_FLOWS["influence"](recipe_a, inputs={"data": data_a, "warmup": warm, "features": feats_a})
    setup_s = time.time() - t0

    # pool A+: data and projection (the same k) outside the timed part; A's warmup kept
    data_b = STEP_FLOWS["data"](recipe_b)
    proj_b = STEP_FLOWS["projection"](recipe_b, inputs={"data": data_b, "warmup": warm})
    timed, refs = {}, {}
    for name, rec in (("incremental", recipe_b), ("full", recipe_b.with_overrides({"features.reuse": False}))):
        t = time.time()
        f = STEP_FLOWS["features"](rec, inputs={"data": data_b, "warmup": warm, "projection": proj_b})
        tf = time.time() - t
        i = STEP_FLOWS["influence"](rec, inputs={"data": data_b, "warmup": warm, "features": f})
        timed[name] = {"features_s": round(tf, 2), "influence_s": round(time.time() - t - tf, 2)}
        timed[name]["total_s"] = round(time.time() - t, 2)
        refs[name] = (f, i)
    (fi, ii), (ff, iff) = refs["incremental"], refs["full"]
    n_a = feats_a.meta["n_train"]
    # the bound batching alone makes: a batch changes a float32 gradient's last bits, so after the store's fp16
    # cast a row computed in other batches differs by at most one fp16 spacing per coordinate
    ulps = max(_ulps(_features(fi, c=c), _features(ff, c=c)) for c in range(fi.meta["checkpoints"]))
    bound = 1.0
    worst = float(np.abs(_features(fi) - _features(ff)).max())
    old_rows = float(max(np.abs(_features(ff, c=c)[:n_a] - _features(feats_a, c=c)).max() for c in range(fi.meta["checkpoints"])))
    copied_exact = bool(np.array_equal(_features(fi)[:n_a], _features(feats_a)))
    same = {m: _select(recipe_b, data_b, ii, m, budget) == _select(recipe_b, data_b, iff, m, budget) for m in METHODS}
    result = {
        "bench": "incremental",
        "recipe": str(Path(args.recipe).relative_to(ROOT)) if Path(args.recipe).is_relative_to(ROOT) else args.recipe,
        "pool_a": n_a,
        "pool_b": fi.meta["n_train"],
        "n_val": fi.meta["n_val"],
        "k": args.k,
        "incremental": timed["incremental"],
        "full": timed["full"],
        "incremental_fraction_of_full": round(timed["incremental"]["total_s"] / timed["full"]["total_s"], 4),
        "target_fraction": 0.15,
        "rows_reused": fi.meta["rows_reused"],
        "rows_computed": fi.meta["rows_computed"],
        "influence_rows_reused": ii.meta["rows_reused"],
        "copied_rows_bit_identical": copied_exact,
        "batching_bound_fp16_ulps": bound,
        "max_difference_fp16_ulps": ulps,
        "max_feature_difference": worst,
        "old_rows_full_vs_a": old_rows,  # A's rows: in the same batches in both passes here
        "same_selection": same,
        "identical_to_full": bool(all(same.values()) and ulps <= bound and copied_exact),
        "setup_s": round(setup_s, 1),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} cores",
    }
    line = json.dumps(result)
    with open(args.out, "a") as fh:
        fh.write(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
