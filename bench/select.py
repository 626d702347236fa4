"""Benchmark selection: BIDS's sorted-column pointer form against the naive O(K N M) loop, and the diversity
selectors (mig, kmq) against plain-numpy transcriptions of their reference loops on the same inputs.

    python bench/select.py                       # all: BIDS 50k x 300 side by side and 1M x 1k; mig, kmq at 100k
    python bench/select.py --large-n 0           # skip the large BIDS case
    python bench/select.py --only mig,kmq        # only the diversity selectors (100k x 256, 5%)

Prints one JSON object per case and, last, a JSON line with the figures:
identical, speedup, seconds, peak_memory_mb (BIDS); mig_s_100k, kmq_s_100k
and their reference_s / identical / speedup (diversity), for what ran.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named like the stdlib `select` module: run as a script, its
# folder would shadow it. Put the repository root there instead.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json
import resource
import time

import numpy as np

from bench.common import PeakRSS
from bidsml.selection import bids_iterate, bids_naive, normalize_columns


def scores(n: int, m: int, seed: int) -> np.ndarray:
    """Returns an n x m float32 influence-like matrix: per-column scale differs (as in the paper)."""
    rng = np.random.default_rng(seed)
    A = np.empty((n, m), dtype=np.float32)
    scale = rng.uniform(0.2, 5.0, size=m).astype(np.float32)
    for s in range(0, n, 65536):
        A[s : s + 65536] = rng.standard_normal((min(65536, n - s), m), dtype=np.float32) * scale
    return A


def side_by_side(n: int, m: int, frac: float, seed: int) -> dict:
    A = scores(n, m, seed)
    k = int(round(frac * n))
    Z, _ = normalize_columns(A, overwrite=True)
    t = time.perf_counter()
    fast = bids_iterate(Z, k)
    t_fast = time.perf_counter() - t
    t = time.perf_counter()
    naive = bids_naive(Z, k)
    t_naive = time.perf_counter() - t
    return {
        "case": "side_by_side",
        "n": n,
        "m": m,
        "k": k,
        "identical": bool(np.array_equal(fast, naive)),
        "seconds": round(t_fast, 3),
        "naive_seconds": round(t_naive, 3),
        "speedup": round(t_naive / t_fast, 1),
    }


def large(n: int, m: int, frac: float, seed: int) -> dict:
    k = int(round(frac * n))
    with PeakRSS() as mem:
        A = scores(n, m, seed)
        t = time.perf_counter()
        Z, _ = normalize_columns(A, overwrite=True)  # in place: Z reuses A's 4 GB
        t_norm = time.perf_counter() - t
        t = time.perf_counter()
        sel = bids_iterate(Z, k)
        t_sel = time.perf_counter() - t
    assert len(set(sel.tolist())) == k
    return {
        "case": "large",
        "n": n,
        "m": m,
        "k": k,
        "normalize_seconds": round(t_norm, 2),
        "select_seconds": round(t_sel, 2),
        "seconds": round(t_norm + t_sel, 2),
        "peak_memory_mb": round(mem.peak_mb),
        "maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def embeddings(n: int, d: int, seed: int, centers: int = 400) -> np.ndarray:
    """Returns n x d L2-normalised embeddings around `centers` random directions (clustered, as text embeddings)."""
    rng = np.random.default_rng(seed)
    C = rng.standard_normal((centers, d), dtype=np.float32)
    X = C[rng.integers(0, centers, n)] + 0.6 * rng.standard_normal((n, d), dtype=np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def diversity_inputs(method: str, n: int, d: int, seed: int):
    from bidsml.selectors import PoolFields, SelectorInputs, selector_options

    rng = np.random.default_rng(seed + 1)
    reps = {"train_weighted": embeddings(n, d, seed), "train_quality": -rng.gamma(2.0, 0.6, n)}
    pool = PoolFields(sources=[f"source{i}" for i in rng.integers(0, 20, n)])
    return SelectorInputs(tasks=["t"], representations=reps, pool=pool, options=selector_options(method))


def reference_mig_loop(Vp: np.ndarray, k: int, a: float, b: float) -> np.ndarray:
    """xsample's MIGSampler.sample loop: every step, every unselected row's gain, the argmax (first)."""
    taken = np.zeros(len(Vp), dtype=bool)
    x = np.zeros(Vp.shape[1])
    out = []
    for _ in range(k):
        gain = (Vp * (b * (x + a) ** (b - 1))).sum(axis=1)
        gain[taken] = -np.inf
        i = int(np.argmax(gain))
        out.append(i)
        taken[i] = True
        x += Vp[i]
    return np.asarray(out)


def mig_case(n: int, d: int, frac: float, seed: int) -> dict:
    from bidsml.selectors import run_selector
    from bidsml.selectors.mig import mig_vectors

    x = diversity_inputs("mig", n, d, seed)
    k = int(round(frac * n))
    with PeakRSS() as mem:
        t = time.perf_counter()
        sel = run_selector("mig", x, k, seed)
        t_sel = time.perf_counter() - t
    t = time.perf_counter()
    Vp = mig_vectors(x, seed)  # the same labels, graph and vectors (k-means with the same seed)
    t_vec = time.perf_counter() - t
    t = time.perf_counter()
    ref = reference_mig_loop(Vp, k, x.options.phi_a, x.options.phi_b)
    t_ref = time.perf_counter() - t
    return {
        "case": "mig",
        "n": n,
        "d": d,
        "k": k,
        "labels": int(Vp.shape[1]),
        "identical": bool(np.array_equal(sel, ref)),
        "seconds": round(t_sel, 2),
        "vectors_seconds": round(t_vec, 2),
        "greedy_seconds": round(t_sel - t_vec, 2),
        "reference_loop_seconds": round(t_ref, 2),
        "reference_seconds": round(t_vec + t_ref, 2),
        "speedup_greedy": round(t_ref / max(t_sel - t_vec, 1e-9), 1),
        "peak_memory_mb": round(mem.peak_mb),
    }


def reference_kmq_loop(labels: np.ndarray, n_clusters: int, q: np.ndarray, k: int, seed: int) -> np.ndarray:
    """KMenasRandomDeita.select's sampling loop: per cluster np.where, softmax(quality), floor(K / k) rows."""
    rng = np.random.default_rng(seed)
    final = np.array([], dtype=np.int64)
    for i in range(n_clusters):
        idx = np.where(labels == i)[0]
        s = np.exp(q[idx] - q[idx].max())
        size = min(k // n_clusters, len(idx))
        final = np.concatenate((final, rng.choice(idx, size=size, replace=False, p=s / s.sum())))
    return final


def kmq_case(n: int, d: int, frac: float, seed: int) -> dict:
    from bidsml.clusters import kmeans_labels
    from bidsml.selectors import run_selector
    from bidsml.selectors.kmq import kmq_cluster_count

    x = diversity_inputs("kmq", n, d, seed)
    k = int(round(frac * n))
    n_clusters = kmq_cluster_count(k, x.options)
    with PeakRSS() as mem:
        t = time.perf_counter()
        sel = run_selector("kmq", x, k, seed)
        t_sel = time.perf_counter() - t
    t = time.perf_counter()
    labels = kmeans_labels(x.representations["train_weighted"], n_clusters, seed)
    t_km = time.perf_counter() - t
    t = time.perf_counter()
    ref = reference_kmq_loop(labels, n_clusters, x.representations["train_quality"], k, seed)
    t_ref = time.perf_counter() - t
    return {
        "case": "kmq",
        "n": n,
        "d": d,
        "k": k,
        "clusters": n_clusters,
        # the reference stops short of K when clusters are small; kmq's first rows are its rows, then the fill
        "identical": bool(np.array_equal(sel[: len(ref)], ref)),
        "reference_rows": int(len(ref)),
        "seconds": round(t_sel, 2),
        "kmeans_seconds": round(t_km, 2),
        "reference_seconds": round(t_km + t_ref, 2),
        "reference_loop_seconds": round(t_ref, 3),
        "peak_memory_mb": round(mem.peak_mb),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--m", type=int, default=300)
    ap.add_argument("--large-n", type=int, default=1_000_000)
    ap.add_argument("--large-m", type=int, default=1_000)
    ap.add_argument("--budget", type=float, default=0.15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--diversity-n", type=int, default=100_000, help="mig, kmq: pool rows")
    ap.add_argument("--diversity-d", type=int, default=256, help="mig, kmq: embedding dimension")
    ap.add_argument("--diversity-budget", type=float, default=0.05, help="mig, kmq: fraction (the papers' 5%%)")
    ap.add_argument("--only", default="bids,mig,kmq", help="comma-separated cases: bids, mig, kmq")
    args = ap.parse_args()
    only = set(args.only.split(","))
    last: dict = {}
    if "bids" in only:
        a = side_by_side(args.n, args.m, args.budget, args.seed)
        print(json.dumps(a), flush=True)
        b = large(args.large_n, args.large_m, args.budget, args.seed) if args.large_n else {}
        if b:
            print(json.dumps(b), flush=True)
        last |= {
            "identical": a["identical"],
            "speedup": a["speedup"],
            "seconds": b.get("seconds", a["seconds"]),
            "peak_memory_mb": b.get("peak_memory_mb"),
            "naive_seconds": a["naive_seconds"],
            "fast_seconds_50k": a["seconds"],
            "large": {"n": b.get("n"), "m": b.get("m"), "k": b.get("k")} if b else None,
        }
    tag = f"{args.diversity_n // 1000}k" if args.diversity_n % 1000 == 0 else str(args.diversity_n)
    for name, case in (("mig", mig_case), ("kmq", kmq_case)):
        if name in only:
            r = case(args.diversity_n, args.diversity_d, args.diversity_budget, args.seed)
            print(json.dumps(r), flush=True)
            last |= {
                f"{name}_s_{tag}": r["seconds"],
                f"{name}_reference_s_{tag}": r["reference_seconds"],
                f"{name}_identical": r["identical"],
                f"{name}_speedup": round(r["reference_seconds"] / r["seconds"], 2),
                f"{name}_peak_memory_mb": r["peak_memory_mb"],
            }
    print(json.dumps(last))


if __name__ == "__main__":
    main()
