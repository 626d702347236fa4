"""Benchmark BIDS selection: the sorted-column pointer form against the naive O(K N M) loop.

    python bench/select.py                       # N=50k M=300 K=15% side by side, then N=1M M=1k K=15%
    python bench/select.py --large-n 0           # skip the large case

Prints one JSON object per case and, last, a JSON line with the figures the
issue asks for: identical, speedup, seconds, peak_memory_mb.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--m", type=int, default=300)
    ap.add_argument("--large-n", type=int, default=1_000_000)
    ap.add_argument("--large-m", type=int, default=1_000)
    ap.add_argument("--budget", type=float, default=0.15)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    a = side_by_side(args.n, args.m, args.budget, args.seed)
    print(json.dumps(a), flush=True)
    b = large(args.large_n, args.large_m, args.budget, args.seed) if args.large_n else {}
    if b:
        print(json.dumps(b), flush=True)
    print(
        json.dumps(
            {
                "identical": a["identical"],
                "speedup": a["speedup"],
                "seconds": b.get("seconds", a["seconds"]),
                "peak_memory_mb": b.get("peak_memory_mb"),
                "naive_seconds": a["naive_seconds"],
                "fast_seconds_50k": a["seconds"],
                "large": {"n": b.get("n"), "m": b.get("m"), "k": b.get("k")} if b else None,
            }
        )
    )


if __name__ == "__main__":
    main()
