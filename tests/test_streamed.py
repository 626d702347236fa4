"""Out-of-core selection: the store read in row blocks selects what the in-memory functions select."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import bidsml.influence.streamed as streamed
from bidsml.errors import ArtifactError
from bidsml.selection import bids_iterate, bids_naive, normalize_columns, task_means, top_k
from bidsml.selectors import SelectorInputs, run_selector
from bidsml.influence.streamed import ArraySource, bids_streamed
from storage.influence_store import StoredMatrix, open_influence, save_influence, write_influence_blocks


def _matrix(rng, n, m, ties=False, constant=False):
    A = rng.normal(size=(n, m)).astype(np.float32)
    if ties:
        A = np.round(A, 1)
    if constant:
        A[:, 0] = 0.5
    return A


@pytest.mark.parametrize("seed", range(12))
def test_streamed_bids_equals_the_in_memory_iteration_through_refills(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    monkeypatch.setattr(streamed, "SAMPLE_ROWS", 1000)  # every row: lists of ~4 rows run out and are refilled
    n, m = int(rng.integers(20, 200)), int(rng.integers(2, 6))
    A = _matrix(rng, n, m, ties=seed % 2 == 0, constant=seed % 3 == 0)
    k = n if seed % 4 == 0 else int(rng.integers(n // 2, n))
    Z, _ = normalize_columns(A)
    got, info = bids_streamed(ArraySource(A, block_rows=int(rng.integers(3, 40))), k, target=1, estimate=False)
    np.testing.assert_array_equal(got, bids_iterate(Z, k, block=3))
    np.testing.assert_array_equal(got, bids_naive(Z, k))
    assert info["scans"] > 1  # refills happened
    raw, _ = bids_streamed(ArraySource(A, block_rows=7), k, normalize=False, target=2, estimate=False)
    np.testing.assert_array_equal(raw, bids_naive(A, k))


def _tables(n, tasks):
    train = pd.DataFrame({"idx": range(n), "id": [f"p{i}" for i in range(n)], "source": "s", "n_tokens": 1})
    val = pd.DataFrame(
        {
            "idx": range(len(tasks)),
            "id": [f"v{j}" for j in range(len(tasks))],
            "task": tasks,
            "subtask": None,
            "capability": "c",
        }
    )
    ck = pd.DataFrame({"c": [0], "step": [1], "mean_lr": [1e-4], "weight": [1.0]})
    return train, val, ck


def _in_memory(method, A, tasks, k):
    Z, kept = normalize_columns(A)
    if method == "less":
        return top_k(task_means(A, tasks)[0].max(axis=1), k)
    if method == "sum":
        return top_k(A.mean(axis=1), k)
    if method == "instance-max":
        return top_k(A.max(axis=1), k)
    if method == "norm-instance-max":
        return top_k(Z.max(axis=1), k)
    if method == "bids":
        return bids_iterate(Z, k)
    if method == "bids-no-norm":
        return bids_iterate(A, k)
    return bids_iterate(task_means(Z, [tasks[j] for j in kept])[0], k)


@pytest.mark.parametrize(
    "method", ["less", "sum", "instance-max", "norm-instance-max", "bids", "bids-no-norm", "bids-task"]
)
def test_every_influence_selector_reads_the_store_in_blocks_and_selects_as_in_memory(method, tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    tasks = ["a", "b", "a", "c", "b", "a"]
    A = _matrix(rng, 301, len(tasks), ties=True)
    save_influence(tmp_path, A, *_tables(301, tasks))
    src = StoredMatrix(tmp_path)
    src.block_rows = 17  # many blocks
    monkeypatch.setattr(streamed, "SAMPLE_ROWS", 9)
    got = run_selector(method, SelectorInputs(tasks=tasks, influence=src), 120)
    np.testing.assert_array_equal(got, _in_memory(method, A, tasks, 120))
    np.testing.assert_array_equal(run_selector(method, SelectorInputs(tasks=tasks, influence=A), 120), got)


def test_task_stats_from_the_pass_equal_sql_over_every_score(tmp_path):
    rng = np.random.default_rng(2)
    tasks = ["t1", "t1", "t2", "t3", "t3", "t3"]
    A = _matrix(rng, 500, len(tasks))
    A[:, 2] = 0.25  # t2's only column is constant: no z-scores
    save_influence(tmp_path, A, *_tables(500, tasks))
    con = open_influence(tmp_path)
    got = con.sql("SELECT * FROM task_stats ORDER BY task").df().set_index("task")
    want = (
        con.sql(
            """WITH z AS (SELECT i.val_idx, i.score, (i.score - c.mean) / nullif(c.std, 0) AS z
                      FROM influence i JOIN column_stats c ON c.val_idx = i.val_idx)
           SELECT v.task, count(DISTINCT z.val_idx) AS n_val, avg(z.score) AS raw_mean,
                  stddev_samp(z.score) AS raw_std, min(z.score) AS raw_min, max(z.score) AS raw_max,
                  quantile_cont(z.score, 0.99) AS raw_p99, avg(z.z) AS z_mean, stddev_samp(z.z) AS z_std,
                  max(z.z) AS z_max, quantile_cont(z.z, 0.99) AS z_p99
           FROM z JOIN val_examples v ON v.idx = z.val_idx GROUP BY v.task ORDER BY v.task"""
        )
        .df()
        .set_index("task")
    )
    con.close()
    assert got["n_val"].tolist() == [2, 1, 3]
    for col in ["raw_mean", "raw_std", "raw_min", "raw_max", "raw_p99", "z_std", "z_max", "z_p99"]:
        np.testing.assert_allclose(got[col].astype(float), want[col].astype(float), rtol=1e-5, atol=1e-6, err_msg=col)
    assert got.loc["t2", "z_mean"] is None or np.isnan(got.loc["t2", "z_mean"])
    np.testing.assert_allclose(got.loc[["t1", "t3"], "z_mean"], want.loc[["t1", "t3"], "z_mean"], atol=1e-6)


def test_score_views_read_the_matrix_in_place_and_write_nothing(tmp_path):
    import os

    rng = np.random.default_rng(5)
    A = _matrix(rng, 70, 5)
    A[:, 3] = 0.25  # constant: no z-score, so b's z is column 2's alone and c has none
    A[:, 4] = 0.5
    save_influence(tmp_path, A, *_tables(70, ["a", "a", "b", "b", "c"]))
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    con = open_influence(tmp_path)
    got = con.execute("SELECT train_idx, val_idx, score FROM influence").fetchnumpy()
    B = np.full_like(A, np.nan)
    B[got["train_idx"], got["val_idx"]] = got["score"]
    np.testing.assert_array_equal(B, A)  # every score once, in its cell
    assert con.execute("SELECT count(*) FROM influence WHERE score > 0.5").fetchone()[0] == int((A > 0.5).sum())
    top = con.execute("SELECT train_idx FROM top_train_for_task WHERE task = 'b' AND rank <= 5 ORDER BY rank").fetchall()
    want = np.lexsort((np.arange(70), -A[:, 2:4].astype(np.float64).mean(axis=1)))[:5]
    assert [r[0] for r in top] == want.tolist()
    # task_influence equals SQL's per-task averages over the long scores (z: constant columns left out)
    got = con.execute("SELECT train_idx, task, score, z FROM task_influence ORDER BY task, train_idx").df()
    want = con.execute(
        """SELECT n.train_idx, v.task, avg(n.score) AS score, avg(n.z) AS z FROM normalized_influence n
        JOIN val_examples v ON v.idx = n.val_idx GROUP BY ALL ORDER BY v.task, n.train_idx"""
    ).df()
    np.testing.assert_allclose(got[["score", "z"]].to_numpy(float), want[["score", "z"]].to_numpy(float), rtol=1e-12)
    assert got["train_idx"].tolist() == want["train_idx"].tolist() and got["task"].tolist() == want["task"].tolist()
    con.close()
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    assert not any("scores" in p for p in os.listdir(tmp_path))


def test_a_store_larger_than_the_free_space_is_refused_at_once_naming_run_root(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 0, 3 * 2**30))
    called = []
    with pytest.raises(ArtifactError, match=r"needs 3\.7 GiB more .* 3\.0 GiB free.*set run_root"):
        write_influence_blocks(tmp_path, 1_000_000, 1_000, lambda a, b: called.append(a))
    assert not called and not list(tmp_path.iterdir())


@pytest.mark.e2e
def test_bench_scale_smoke_selects_the_in_memory_sequence_and_measures_the_limit(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parents[1]
    cmd = [
        sys.executable,
        "bench/scale.py",
        "--parts",
        "store",
        "--n",
        "20000",
        "--big-n",
        "0",
        "--baseline-n",
        "20000",
    ]
    out = subprocess.run(
        cmd, cwd=root, capture_output=True, text=True, timeout=600, env=os.environ | {"TMPDIR": str(tmp_path)}
    )
    assert out.returncode == 0, out.stderr[-2000:]
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert last["same_sequence_as_in_memory_at_20k"] is True and last["same_first_selected_rows_at_equal_n"] is True
    assert last["limit_s"] > 0 and last["ratio_to_limit"] == pytest.approx(
        last["store_select_s"] / last["limit_s"], rel=0.05
    )
    assert last["store_gb"] == 0.08 and last["n"] == 20000


def test_the_compiled_list_sort_orders_by_column_value_descending_then_row():
    from bidsml.influence.streamed import _sorted_lists

    rng = np.random.default_rng(9)
    n, m = 5000, 7
    c = rng.integers(0, m, n)
    r = np.sort(rng.integers(0, 10**7, n))  # entries arrive in row order
    v = rng.choice(np.array([-np.inf, -2.5, -0.0, 0.0, 1e-40, 3.25, 7e30], dtype=np.float32), n)
    v[::3] = rng.normal(size=len(v[::3])).astype(np.float32)
    rows, vals, bounds = _sorted_lists(c, r, v, m)
    for j in range(m):
        sel = c == j
        order = np.lexsort((r[sel], -v[sel].astype(np.float64)))
        np.testing.assert_array_equal(rows[bounds[j] : bounds[j + 1]], r[sel][order])
        np.testing.assert_array_equal(vals[bounds[j] : bounds[j + 1]], v[sel][order] + np.float32(0.0))


def test_bids_on_a_million_rows_with_ties_is_the_same_sequence_streamed_in_memory_and_naive():
    """1M x 6 scores rounded to 2 decimals (about 400 distinct values among a column's first 1,000 picks): 150,000
    picks out of core (one scan), in memory and, for the first 40, by the naive loop, pick for pick."""
    rng = np.random.default_rng(11)
    A = np.round(rng.normal(size=(1_000_000, 6)), 2).astype(np.float32)
    Z, _ = normalize_columns(A)
    got, info = bids_streamed(ArraySource(A), 150_000)
    np.testing.assert_array_equal(got, bids_iterate(Z, 150_000))
    np.testing.assert_array_equal(got[:40], bids_naive(Z, 40))
    assert info["scans"] == 1 and len(np.unique(got)) == 150_000
    # without the depth estimate, lists run out and are refilled: the same sequence
    again, info = bids_streamed(ArraySource(A), 150_000, estimate=False)
    np.testing.assert_array_equal(again, got)
    assert info["scans"] > 1
