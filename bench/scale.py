"""Benchmark the scale-out paths side by side against today's baselines (not a test).

    python bench/scale.py                          # everything below on a quiet 2-core machine
    python bench/scale.py --parts store            # one part: store | featurize | fanout
    python bench/scale.py --parts store --n 20000 --big-n 0 --baseline-n 20000    # smoke run (CI-sized)

1. store + select: synthetic features (N pool rows, M validation columns,
   k=256, 2 checkpoints) in a Zarr gradient store, then, through the
   functions the steps call, the influence pass (matrix, column statistics
   and row sample in one pass), the store's tables (task_stats from those
   statistics), a task_stats query, `bids` at 15% read out of core from the
   store (`bids_s`: the compiled pick loop, its list scans and row reads), and
   the composition's row reads. At N=1,000,000, M=1,000 in a child process
   (wall time, peak RSS), then the same at N=5,800,000 (`--big-n`). Each store
   then answers two SQL queries in another process (`QUERIES`: the top 100 rows
   of one task, a count over every score), read from the matrix in place:
   seconds, bytes the process wrote, peak RSS.
   At 1M the out-of-core sequence is compared with `bids_iterate` on the
   matrix in memory (after the timed part; its memory is not in the figure).
   `limit_s`: this machine's lower bound for the same work, measured here
   three times (each term's runs and median reported; the limit is the sum
   of the medians): the influence matmuls alone (features in memory) plus
   writing and reading the matrix's bytes once on this disk. Baseline: the store path before
   streaming (dense A in RAM, an N*M-row pandas frame into a DuckDB table,
   read back row by row into a dense matrix, bids), at the largest N it
   survives in 8 GB, and ours at the same N for the ratio.
2. featurization, tiny model, N=20,000: one process (1 thread) vs a 2-worker
   LocalCluster (1 thread each) vs a real cluster (`dask scheduler` + 2
   `dask worker --nthreads 1` processes, the README's commands) through the
   featurize step; stores compared, chunks the driver computed (want 0).
3. fan-out of 4 method x budget branches (tiny recipe, upstream cached):
   sequential vs a 2-worker LocalCluster vs the real 2-worker cluster.

The last line is JSON with every figure.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this folder is sys.path[0], and its select.py would shadow the stdlib module.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import contextlib
import json
import os
import resource
import subprocess
import tempfile
import time

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
K_DIM, N_CKPT, BUDGET = 256, 2, 0.15


# --- 1. store + select ------------------------------------------------------------------------------


class PeakAnon:
    """Samples the process's anonymous memory (RssAnon) every 20 ms: its peak, beside ru_maxrss, which also counts
    the memory-mapped matrix's pages (page cache the OS reclaims)."""

    def __enter__(self):
        import threading

        self.peak_mb, self._stop = 0.0, threading.Event()

        def sample():
            while not self._stop.wait(0.02):
                for line in Path("/proc/self/status").read_text().splitlines():
                    if line.startswith("RssAnon:"):
                        self.peak_mb = max(self.peak_mb, int(line.split()[1]) / 1024)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def synthetic_features(root: Path, n: int, m: int, seed: int = 0) -> tuple[list[np.ndarray], list[float], list[str]]:
    """Writes normalised fp16 train features for 2 checkpoints into a Zarr store; returns (val feats, weights, tasks)."""
    from storage.gradients import write_chunks

    rng = np.random.default_rng(seed)
    n_tasks = 10
    tasks = [f"task{j % n_tasks}" for j in range(m)]
    # tasks differ in how aligned the pool is with them (as in the paper: some tasks get larger raw influence)
    centers = rng.standard_normal((n_tasks, K_DIM)).astype(np.float32)
    val = []
    for c in range(N_CKPT):
        v = centers[[j % n_tasks for j in range(m)]] + 0.5 * rng.standard_normal((m, K_DIM)).astype(np.float32)
        val.append((v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float16))
        gen = np.random.default_rng(seed + 1 + c)

        def compute(start, stop, gen=gen):
            mix = gen.random((stop - start, n_tasks), dtype=np.float32) ** 4
            x = mix @ centers + gen.standard_normal((stop - start, K_DIM), dtype=np.float32) * 2.0
            return x / np.linalg.norm(x, axis=1, keepdims=True), np.ones(stop - start, dtype=np.float32)

        write_chunks(root, "train", c, n, K_DIM, 65536, compute)
    return val, [0.6, 0.4], tasks


def _tables(n: int, m: int, tasks: list[str]):
    import pandas as pd

    train = pd.DataFrame({"idx": range(n), "id": [f"p{i}" for i in range(n)], "source": "s", "n_tokens": 100})
    val = pd.DataFrame(
        {"idx": range(m), "id": [f"v{j}" for j in range(m)], "task": tasks, "subtask": None, "capability": "c"}
    )
    ck = pd.DataFrame({"c": [0, 1], "step": [10, 20], "mean_lr": [2e-5, 1e-5], "weight": [0.6, 0.4]})
    return train, val, ck


def store_select_ours(n: int, m: int, work: Path, compare: bool = False) -> dict:
    """The out-of-core path, as the influence and select steps run it."""
    from bidsml.influence.scores import influence_block
    from bidsml.selectors import SelectorInputs, run_selector
    from storage.gradients import read_feature_rows
    from storage.influence_store import (
        influence_matrix_array,
        open_influence,
        read_influence_rows,
        save_influence_tables,
        store_bytes,
        write_influence_blocks,
    )

    import bidsml.selectors.influence as influence_selectors
    from bidsml.influence.streamed import ArraySource, bids_streamed

    t = time.time()  # the compiled loops on a tiny store: loaded from numba's cache (compiled at the first use)
    tiny = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    (work / "tiny").mkdir()
    write_influence_blocks(work / "tiny", 64, 3, lambda a, b: tiny[a:b])
    bids_streamed(influence_matrix_array(work / "tiny"), 8)
    bids_streamed(ArraySource(tiny), 8)
    numba_load_s = time.time() - t
    val, w, tasks = synthetic_features(work / "feats", n, m)
    t0 = time.time()
    store = work / "influence"
    store.mkdir()
    write_influence_blocks(
        store,
        n,
        m,
        lambda a, b: influence_block([read_feature_rows(work / "feats", "train", c, a, b) for c in range(2)], val, w),
    )
    save_influence_tables(store, *_tables(n, m, tasks))
    t_infl = time.time() - t0
    con = open_influence(store)
    stats = con.execute("SELECT * FROM task_stats").fetchall()
    con.close()
    t_query = time.time() - t0 - t_infl
    info = {}

    def streamed(*a, **kw):  # the selector's own call, its scans and list sizes kept for the report
        picked, stats = bids_streamed(*a, **kw)
        info.update(stats)
        return picked, stats

    influence_selectors.bids_streamed = streamed
    t1 = time.time()
    with PeakAnon() as anon:
        rows = run_selector("bids", SelectorInputs(tasks=tasks, influence=influence_matrix_array(store)), BUDGET)
    t_bids = time.time() - t1
    read_influence_rows(store, rows[:1000])  # composition reads the selected rows back
    total = time.time() - t0
    out = {
        "seconds": total,
        "influence_store_s": t_infl,
        "task_stats_s": t_query,
        "bids_s": t_bids,
        "numba_load_s": numba_load_s,
        "n_tasks_in_stats": len(stats),
        "k": len(rows),
        "first_rows": rows[:5].tolist(),
        "store_gb": round(store_bytes(n, m) / 1e9, 2),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "bids_peak_anon_mb": anon.peak_mb,
        "bids_scans": info.get("scans"),
        "bids_list_entries": info.get("list_entries"),
    }
    np.save(work / "bids_rows.npy", rows)
    if compare:  # untimed, after the peak above: the in-memory iteration on the same matrix
        from bidsml.selection import bids_iterate, normalize_columns
        from storage.influence_store import read_influence_matrix

        Z, _ = normalize_columns(read_influence_matrix(store), overwrite=True)
        out["same_sequence_as_in_memory"] = bool(np.array_equal(bids_iterate(Z, len(rows)), rows))
    return out


QUERIES = {  # what a user asks of every score (`bidsflow query`): the top 100 rows of one task; a count over all
    "top100": "SELECT train_idx, train_id, score FROM top_train_for_task WHERE task = 'task3' AND rank <= 100",
    "count": "SELECT count(*) FROM influence WHERE score > 0.1",
}


def query_store(work: Path) -> dict:
    """Runs QUERIES on a store built by `store_select_ours` (its own process: seconds, bytes written, peak RSS)."""
    from storage.influence_store import open_influence

    def written() -> int:
        io = dict(line.split(": ") for line in Path("/proc/self/io").read_text().strip().splitlines())
        return int(io["write_bytes"])

    out, w0 = {}, written()
    with PeakAnon() as anon:
        con = open_influence(work / "influence")
        for name, sql in QUERIES.items():
            t = time.time()
            got = con.execute(sql).fetchall()
            out[f"query_{name}_s"] = time.time() - t
            out[f"query_{name}_rows"] = len(got)
        con.close()
    out["peak_anon_mb"] = anon.peak_mb
    out["query_bytes_written"] = written() - w0
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def machine_limit(n: int, m: int, work: Path) -> dict:
    """Returns this machine's lower bound for the store's work: the influence matmuls alone (features in memory,
    the same shapes and flops) plus writing the matrix's bytes once and reading them once on this disk."""
    from bidsml.influence.scores import influence_block
    from storage.influence_store import BLOCK_ROWS

    rng = np.random.default_rng(0)
    feats = [rng.standard_normal((BLOCK_ROWS, K_DIM), dtype=np.float32).astype(np.float16) for _ in range(N_CKPT)]
    val = [rng.standard_normal((m, K_DIM), dtype=np.float32).astype(np.float16) for _ in range(N_CKPT)]
    t = time.time()
    for s in range(0, n, BLOCK_ROWS):
        b = min(n, s + BLOCK_ROWS) - s
        block = influence_block([f[:b] for f in feats], val, [0.6, 0.4])
    matmul_s = time.time() - t
    block = np.resize(block, (BLOCK_ROWS, m))  # a full block of scores (the last one computed may be short)
    path = work / "bytes.bin"
    t = time.time()
    with open(path, "wb") as f:
        for s in range(0, n, BLOCK_ROWS):
            block[: min(n, s + BLOCK_ROWS) - s].tofile(f)
    write_s = time.time() - t
    t = time.time()
    with open(path, "rb") as f:
        while np.fromfile(f, dtype=np.float32, count=BLOCK_ROWS * m).size:
            pass
    read_s = time.time() - t
    path.unlink()
    return {"matmul_s": matmul_s, "write_s": write_s, "read_s": read_s, "limit_s": matmul_s + write_s + read_s}


# The task_stats view as the store defined it before streaming (window z-scores, exact quantiles).
BASELINE_TASK_STATS = """
    WITH n AS (SELECT train_idx, val_idx, score,
                      (score - avg(score) OVER w) / nullif(stddev_samp(score) OVER w, 0) AS z
               FROM influence WINDOW w AS (PARTITION BY val_idx))
    SELECT v.task, count(DISTINCT n.val_idx) AS n_val,
           avg(n.score) AS raw_mean, stddev_samp(n.score) AS raw_std, min(n.score) AS raw_min, max(n.score) AS raw_max,
           quantile_cont(n.score, 0.99) AS raw_p99, avg(n.z) AS z_mean, stddev_samp(n.z) AS z_std,
           max(n.z) AS z_max, quantile_cont(n.z, 0.99) AS z_p99
    FROM n JOIN val_examples v ON v.idx = n.val_idx
    GROUP BY v.task ORDER BY v.task"""


def store_select_baseline(n: int, m: int, work: Path) -> dict:
    """The path before streaming: dense A, a long pandas frame into DuckDB, a dense read-back, bids."""
    import duckdb
    import pandas as pd

    from bidsml.influence.scores import influence_matrix
    from bidsml.selectors import select
    from storage.gradients import iter_feature_chunks

    val, w, tasks = synthetic_features(work / "feats", n, m)
    t0 = time.time()
    A = influence_matrix(lambda c: iter_feature_chunks(work / "feats", "train", c), val, w, n)
    long = pd.DataFrame(
        {
            "train_idx": np.repeat(np.arange(n, dtype=np.int32), m),
            "val_idx": np.tile(np.arange(m, dtype=np.int32), n),
            "score": A.ravel(),
        }
    )
    del A
    con = duckdb.connect(str(work / "influence.duckdb"))
    con.register("df_view", long)
    con.execute("CREATE TABLE influence AS SELECT * FROM df_view")
    con.unregister("df_view")
    del long
    train, valdf, _ = _tables(n, m, tasks)
    con.register("v", valdf)
    con.execute("CREATE TABLE val_examples AS SELECT * FROM v")
    con.close()
    con = duckdb.connect(str(work / "influence.duckdb"), read_only=True)
    stats = con.sql(BASELINE_TASK_STATS).fetchall()
    cols = con.sql("SELECT train_idx, val_idx, score FROM influence").fetchnumpy()
    con.close()
    A = np.zeros((n, m), dtype=np.float32)
    A[cols["train_idx"], cols["val_idx"]] = cols["score"]
    del cols
    rows = select("bids", A, tasks, BUDGET)
    return {
        "seconds": time.time() - t0,
        "n_tasks_in_stats": len(stats),
        "k": len(rows),
        "first_rows": rows[:5].tolist(),
    }


def child(kind: str, n: int, m: int, compare: bool = False, work: Path | None = None) -> dict:
    """Runs one store path in a fresh process (in `work`, kept, or a temporary folder); returns its figures."""
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        cmd = [sys.executable, __file__, "--child", kind, "--n", str(n), "--m", str(m), "--work", str(work or tmp)]
        out = subprocess.run(cmd + (["--compare"] if compare else []), capture_output=True, text=True)
    if out.returncode != 0:
        return {"failed": True, "returncode": out.returncode, "stderr": out.stderr[-500:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def ours_and_queries(n: int, m: int, compare: bool) -> dict:
    """Store + select at n in one process, then the SQL queries over its scores in another; the store deleted."""
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        ours = child("ours", n, m, compare, Path(tmp))
        if ours.get("failed"):
            return ours
        queries = child("query", n, m, work=Path(tmp))
    return ours | {k if k.startswith("query_") else f"query_{k}": v for k, v in queries.items()}


def machine_limit_median(n: int, m: int, times: int = 3) -> dict:
    """Returns machine_limit measured `times` times (each term's runs, its median, and the sum of the medians)."""
    runs = [child("limit", n, m) for _ in range(times)]
    out = {}
    for term in ("matmul_s", "write_s", "read_s"):
        values = sorted(r[term] for r in runs)
        out[term] = float(np.median(values))
        out[f"{term}_runs"] = [round(v, 3) for v in values]
    out["limit_s"] = out["matmul_s"] + out["write_s"] + out["read_s"]
    return out


def part_store(n: int, m: int, baseline_ns: list[int], big_n: int) -> dict:
    limit = machine_limit_median(n, m)
    print(json.dumps({"machine_limit": {"n": n, "m": m, **limit}}), flush=True)
    ours = ours_and_queries(n, m, compare=True)
    print(json.dumps({"store_select_ours": {"n": n, "m": m, **ours}}), flush=True)
    big = ours_and_queries(big_n, m, compare=False) if big_n else {}
    if big_n:
        print(json.dumps({"store_select_ours": {"n": big_n, "m": m, **big}}), flush=True)
    base_runs = {}
    for bn in baseline_ns:
        r = child("baseline", bn, m)
        base_runs[bn] = r
        print(json.dumps({"store_select_baseline": {"n": bn, "m": m, **r}}), flush=True)
        if r.get("failed") or r["peak_rss_mb"] > 8192:
            break
    ok = [bn for bn, r in base_runs.items() if not r.get("failed") and r["peak_rss_mb"] <= 8192]
    max_n = max(ok) if ok else 0
    same = child("ours", max_n, m) if max_n else {}
    if max_n:
        print(json.dumps({"store_select_ours_at_baseline_n": {"n": max_n, **same}}), flush=True)
    out = {
        "store_select_s": round(ours["seconds"], 2),
        "store_select_peak_rss_mb": round(ours["peak_rss_mb"]),
        "n": n,
        "m": m,
        "influence_store_s": round(ours["influence_store_s"], 2),
        "task_stats_s": round(ours["task_stats_s"], 2),
        "bids_s": round(ours["bids_s"], 2),
        "bids_peak_anon_mb": round(ours["bids_peak_anon_mb"]),
        "bids_scans": ours["bids_scans"],
        "bids_list_entries": ours["bids_list_entries"],
        "numba_load_s": round(ours["numba_load_s"], 2),
        "store_gb": ours["store_gb"],
        "matmul_s": round(limit["matmul_s"], 3),
        "write_bytes_s": round(limit["write_s"], 3),
        "read_bytes_s": round(limit["read_s"], 3),
        "limit_terms_runs": {t: limit[f"{t}_runs"] for t in ("matmul_s", "write_s", "read_s")},
        "limit_s": round(limit["limit_s"], 3),
        "ratio_to_limit": round(ours["seconds"] / limit["limit_s"], 2),
        "query_top100_s": round(ours["query_top100_s"], 2),
        "query_count_s": round(ours["query_count_s"], 2),
        "query_bytes_written": ours["query_bytes_written"],
        "query_peak_rss_mb": round(ours["query_peak_rss_mb"]),
        f"same_sequence_as_in_memory_at_{n // 1000}k": ours.get("same_sequence_as_in_memory"),
        "targets": {  # issue 40
            "ratio_to_limit": 1.5,
            "bids_s": 3,
            "store_select_s_5_8m": 240,
            "bids_s_5_8m": 30,
            "store_select_peak_rss_mb_5_8m": 6144,
            "query_top100_s_5_8m": 60,
            "query_count_s_5_8m": 60,
            "query_bytes_written_5_8m": 100e6,
        },
        "baseline_max_n": max_n,
        "baseline_s_at_max_n": round(base_runs[max_n]["seconds"], 1) if max_n else None,
        "baseline_peak_rss_mb_at_max_n": round(base_runs[max_n]["peak_rss_mb"]) if max_n else None,
        "ours_s_at_baseline_n": round(same["seconds"], 1) if max_n else None,
        "ours_peak_rss_mb_at_baseline_n": round(same["peak_rss_mb"]) if max_n else None,
        "speedup_at_equal_n": round(base_runs[max_n]["seconds"] / same["seconds"], 2) if max_n else None,
        "same_first_selected_rows_at_equal_n": same.get("first_rows") == base_runs.get(max_n, {}).get("first_rows"),
        "memory_ratio_at_equal_n": round(base_runs[max_n]["peak_rss_mb"] / same["peak_rss_mb"], 2) if max_n else None,
    }
    if n == 1_000_000:
        out["same_sequence_as_in_memory_at_1m"] = out.pop("same_sequence_as_in_memory_at_1000k")
    if big_n:
        key = "5_8m" if big_n == 5_800_000 else f"{big_n // 1000}k"
        ok = not big.get("failed")
        out |= {
            f"store_select_s_{key}": round(big["seconds"], 1) if ok else None,
            f"bids_s_{key}": round(big["bids_s"], 2) if ok else None,
            f"bids_scans_{key}": big.get("bids_scans"),
            f"bids_peak_anon_mb_{key}": round(big["bids_peak_anon_mb"]) if ok else None,
            f"store_select_peak_rss_mb_{key}": round(big["peak_rss_mb"]) if ok else None,
            f"store_gb_{key}": big.get("store_gb"),
            f"query_top100_s_{key}": round(big["query_top100_s"], 2) if ok else None,
            f"query_count_s_{key}": round(big["query_count_s"], 2) if ok else None,
            f"query_bytes_written_{key}": big.get("query_bytes_written"),
            f"query_peak_rss_mb_{key}": round(big["query_peak_rss_mb"]) if ok else None,
            f"failed_{key}": big.get("stderr") if not ok else None,
        }
    return out


# --- 2. featurization: one process vs a 2-worker LocalCluster ----------------------------------------


def _bench_recipe(run_root: Path, n_pool: int):
    from bidsml.config import load_recipe

    shares = {"trivia_qa": 0.3, "math": 0.2, "hellaswag": 0.35, "boolq": 0.15}  # each within its source's size
    return load_recipe(ROOT / "recipes" / "tiny.yaml").with_overrides(
        {
            "run_root": str(run_root),
            "data.pool": [{"source": s, "n": round(n_pool * f)} for s, f in shares.items()],
            "warmup.fraction": 0.005,
            "warmup.epochs": 1,
            "features.chunk_rows": 512,
            "features.threads": 1,  # one thread per process in both modes: identical stores, a fair ratio
            "execution.n_workers": 2,
            "execution.threads_per_worker": 1,
            "execution.shard_chunks": 2,
        }
    )


@contextlib.contextmanager
def _execution(mode: str, tmp: Path):
    """Yields the recipe overrides of an execution mode; `cluster` starts real `dask scheduler` + 2 `dask worker`
    processes (the README's commands, one thread each) and stops them after."""
    if mode != "cluster":
        yield {"execution.task_runner": mode}
        return
    from tests.conftest import Cluster

    c = Cluster(tmp / "node")
    try:
        c.start_scheduler()
        c.start_workers(2)
        yield {"execution.task_runner": "dask", "execution.address": c.address}
    finally:
        c.stop()


MODES = ("local", "dask", "cluster")  # one process; a 2-worker LocalCluster; real scheduler + 2 worker processes


def part_featurize(n_pool: int) -> dict:
    from flows.step_flows import STEP_FLOWS as F
    from storage.names import FEATURES_STORE
    from tests.conftest import store_arrays

    out, refs = {}, {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        for mode in MODES:
            with _execution(mode, Path(tmp) / mode) as overrides:
                recipe = _bench_recipe(Path(tmp) / mode, n_pool).with_overrides(overrides)
                data = F["data"](recipe)
                warm = F["warmup"](recipe, inputs={"data": data})
                t = time.time()
                refs[mode] = F["features"](recipe, inputs={"data": data, "warmup": warm})
                out[mode] = time.time() - t
            n = refs[mode].meta["n_train"] + refs[mode].meta["n_val"]
            by = refs[mode].meta.get("chunks_by")
            print(json.dumps({"featurize": mode, "seconds": round(out[mode], 1), "examples": n, "by": by}), flush=True)
        a = store_arrays(refs["local"].path / FEATURES_STORE)
        identical = True
        for mode in MODES[1:]:
            b = store_arrays(refs[mode].path / FEATURES_STORE)
            identical &= a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    return {
        "featurize_n": n,
        "featurize_examples_per_s_local": round(n / out["local"], 1),
        "featurize_examples_per_s_dask": round(n / out["dask"], 1),
        "featurize_examples_per_s_cluster": round(n / out["cluster"], 1),
        "featurize_dask_speedup": round(out["local"] / out["dask"], 2),
        "featurize_cluster_speedup": round(out["local"] / out["cluster"], 2),
        "featurize_identical": bool(identical),
        "driver_chunks_dask": refs["dask"].meta["driver_chunks"],
        "driver_chunks_cluster": refs["cluster"].meta["driver_chunks"],
        "chunks_by_cluster": refs["cluster"].meta["chunks_by"],
    }


# --- 3. fan-out of 4 branches -----------------------------------------------------------------------


def part_fanout() -> dict:
    from bidsml.config import load_recipe
    from flows.pipeline import pipeline

    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        recipe = load_recipe(ROOT / "recipes" / "tiny.yaml").with_overrides(
            {
                "run_root": tmp,
                "selection.methods": ["random", "less", "bids", "sum"],
                "selection.budgets": [8],
                "execution.n_workers": 2,
                "execution.threads_per_worker": 1,
                "execution.threads": 1,
            }
        )
        pipeline(recipe)  # upstream steps (and a first pass of the branches) into the cache
        times = {}
        for mode in MODES:
            with _execution(mode, Path(tmp) / f"fanout-{mode}") as overrides:
                t = time.time()
                pipeline(recipe.with_overrides(overrides), refresh=["select", "finetune", "evaluate"])
                times[mode] = time.time() - t
            print(json.dumps({"fanout": mode, "seconds": round(times[mode], 1)}), flush=True)
    return {
        "fanout_branches": 4,
        "fanout_sequential_s": round(times["local"], 1),
        "fanout_dask_s": round(times["dask"], 1),
        "fanout_cluster_s": round(times["cluster"], 1),
        "fanout_speedup": round(times["local"] / times["dask"], 2),
        "fanout_cluster_speedup": round(times["local"] / times["cluster"], 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="store,featurize,fanout")
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--m", type=int, default=1_000)
    ap.add_argument("--big-n", type=int, default=5_800_000, help="the out-of-core run's pool size (0: skip it)")
    ap.add_argument("--baseline-n", default="100000,200000,300000", help="baseline sizes, up to the first over 8 GB")
    ap.add_argument("--featurize-n", type=int, default=20_000)
    ap.add_argument("--child", choices=["ours", "baseline", "limit", "query"])
    ap.add_argument("--compare", action="store_true", help="child ours: compare with the in-memory BIDS after")
    ap.add_argument("--work")
    args = ap.parse_args()
    if args.child:
        if args.child == "ours":
            res = store_select_ours(args.n, args.m, Path(args.work), args.compare)
        elif args.child == "limit":
            res = machine_limit(args.n, args.m, Path(args.work))
        elif args.child == "query":
            res = query_store(Path(args.work))
        else:
            res = store_select_baseline(args.n, args.m, Path(args.work))
            res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(res))
        return
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="bench-prefect-"))  # a fresh server database
    os.environ.setdefault("DO_NOT_TRACK", "1")
    t0 = time.time()
    result = {"device": f"cpu ({os.cpu_count()} cores)"}
    parts = args.parts.split(",")
    if "store" in parts:
        result |= part_store(args.n, args.m, [int(x) for x in args.baseline_n.split(",")], args.big_n)
    if "featurize" in parts:
        result |= part_featurize(args.featurize_n)
    if "fanout" in parts:
        result |= part_fanout()
    result["total_s"] = round(time.time() - t0, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
