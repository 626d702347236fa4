"""Artifact digests and publication, Zarr chunk resume, DuckDB influence store."""

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bidsml.errors import ArtifactError
from storage.gradients import read_features, read_norms, write_chunks
from storage.influence_store import load_influence, open_influence, save_influence
from storage.refs import Plan, check_ref, current_digest, materialize


def _plan(tmp_path, **inputs):
    return Plan(run_root=str(tmp_path), kind="thing", inputs=inputs or {"x": 1})


def test_materialize_builds_once_and_publishes_atomically(tmp_path):
    calls = []

    def build(work):
        calls.append(work)
        (work / "a.txt").write_text("hello")
        return {"n": 1}

    ref = materialize(_plan(tmp_path), build)
    assert ref.meta["n"] == 1 and (ref.path / "a.txt").read_text() == "hello"
    # when and how long it took: outside the digest (meta.json), for "cached: built ... in ... s"
    assert set(ref.meta["built"]) == {"finished_at", "seconds"} and ref.meta["built"]["finished_at"] <= time.time()
    assert not ref.path.with_name(ref.path.name + ".partial").exists()
    again = materialize(_plan(tmp_path), build)
    assert again == ref and len(calls) == 1
    other = materialize(_plan(tmp_path, x=2), build)
    assert other.identity != ref.identity and other.digest == ref.digest  # same content, other inputs


def test_modified_artifact_is_detected_and_rebuilt(tmp_path):
    n = {"builds": 0}

    def build(work):
        n["builds"] += 1
        (work / "a.txt").write_text("hello")
        return {}

    ref = materialize(_plan(tmp_path), build)
    (ref.path / "a.txt").write_text("HELLO")
    assert current_digest(ref.path) is None
    with pytest.raises(ArtifactError, match="changed|missing"):
        check_ref(ref)
    ref2 = materialize(_plan(tmp_path), build)
    assert n["builds"] == 2 and ref2.digest == ref.digest and check_ref(ref2)


def test_forced_rebuild_replaces_the_published_folder(tmp_path):
    ref = materialize(_plan(tmp_path), lambda w: (w / "a.txt").write_text("1") and {})
    ref2 = materialize(_plan(tmp_path), lambda w: (w / "a.txt").write_text("2") and {}, force=True)
    assert ref2.path == ref.path and ref2.digest != ref.digest and (ref2.path / "a.txt").read_text() == "2"


def test_zarr_chunks_resume_after_interruption(tmp_path):
    rng = np.random.default_rng(0)
    full = rng.normal(size=(50, 8)).astype(np.float32)
    full /= np.linalg.norm(full, axis=1, keepdims=True)
    norms = rng.random(50).astype(np.float32)
    calls = []

    def compute(start, stop):
        calls.append(start)
        if len(calls) == 3 and not hasattr(compute, "resumed"):
            raise KeyboardInterrupt  # killed during the third chunk
        return full[start:stop], norms[start:stop]

    with pytest.raises(KeyboardInterrupt):
        write_chunks(tmp_path, "train", 0, 50, 8, 16, compute)
    compute.resumed = True
    calls.clear()
    n = write_chunks(tmp_path, "train", 0, 50, 8, 16, compute)
    assert calls == [32, 48] and n == 2  # finished chunks 0 and 16 were not recomputed
    np.testing.assert_array_equal(read_features(tmp_path, "train", 0), full.astype(np.float16))
    np.testing.assert_array_equal(read_norms(tmp_path, "train", 0), norms)


def test_influence_store_roundtrip_and_views(tmp_path):
    A = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    train = pd.DataFrame({"idx": range(4), "id": list("abcd"), "source": ["s1", "s1", "s2", "s2"], "n_tokens": [5] * 4})
    val = pd.DataFrame(
        {
            "idx": range(3),
            "id": ["v0", "v1", "v2"],
            "task": ["t1", "t1", "t2"],
            "subtask": [None] * 3,
            "capability": ["k"] * 3,
        }
    )
    ck = pd.DataFrame({"c": [0], "step": [3], "mean_lr": [1e-4], "weight": [1.0]})
    save_influence(tmp_path, A, train, val, ck)
    B, tr, va = load_influence(tmp_path)
    np.testing.assert_array_equal(A, B)
    assert tr["id"].tolist() == list("abcd") and va["task"].tolist() == ["t1", "t1", "t2"]
    con = open_influence(tmp_path)
    row = con.execute("SELECT score, z FROM task_influence WHERE train_idx = 1 AND task = 't1'").fetchone()
    stats = con.execute("SELECT task, n_val, raw_mean, z_mean, z_std FROM task_stats ORDER BY task").fetchall()
    top = con.execute("SELECT train_id FROM top_train_for_val WHERE val_idx = 2 ORDER BY rank").fetchall()
    con.close()
    assert row[0] == pytest.approx((A[1, 0] + A[1, 1]) / 2)
    z = (A - A.mean(0)) / A.std(0, ddof=1)
    assert row[1] == pytest.approx((z[1, 0] + z[1, 1]) / 2)
    assert stats[0][:2] == ("t1", 2) and stats[0][2] == pytest.approx(A[:, :2].mean())
    assert stats[1][3] == pytest.approx(0, abs=1e-6) and stats[1][4] == pytest.approx(1)
    assert [t[0] for t in top] == ["d", "c", "b", "a"]
    with pytest.raises(ArtifactError, match="influence store not found"):
        open_influence(tmp_path / "nope")


KILLED_WRITER = """
import os, signal, sys
import numpy as np
from storage.gradients import write_chunks
root, full_path = sys.argv[1], sys.argv[2]
full = np.load(full_path)
calls = []
def compute(start, stop):
    calls.append(start)
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # killed hard while computing the third chunk
    return full[start:stop], np.ones(stop - start, dtype=np.float32)
write_chunks(root, "train", 0, len(full), full.shape[1], 16, compute)
"""


def test_sigkilled_writer_resumes_to_the_same_store(tmp_path):
    import subprocess
    import sys

    rng = np.random.default_rng(1)
    full = rng.normal(size=(70, 8)).astype(np.float32)
    np.save(tmp_path / "full.npy", full)
    root = tmp_path / "killed"
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, str(root), str(tmp_path / "full.npy")], cwd=Path(__file__).parents[1]
    )
    assert proc.returncode == -9  # SIGKILL
    calls = []

    def compute(start, stop):
        calls.append(start)
        return full[start:stop], np.ones(stop - start, dtype=np.float32)

    write_chunks(root, "train", 0, 70, 8, 16, compute)
    assert calls == [32, 48, 64]  # the two finished chunks were kept
    clean = tmp_path / "clean"
    write_chunks(clean, "train", 0, 70, 8, 16, lambda a, b: (full[a:b], np.ones(b - a, dtype=np.float32)))
    np.testing.assert_array_equal(read_features(root, "train", 0), read_features(clean, "train", 0))


def test_influence_blocks_resume_and_read_back_by_rows(tmp_path):
    from bidsml.selection import column_stats
    from storage.influence_store import (
        BLOCKS_DONE_DIR,
        StoredMatrix,
        read_influence_matrix,
        read_influence_rows,
        write_influence_blocks,
    )

    A = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    calls = []

    def compute(a, b):
        calls.append(a)
        if len(calls) == 3:
            raise KeyboardInterrupt  # interrupted while computing the third block
        return A[a:b]

    with pytest.raises(KeyboardInterrupt):
        write_influence_blocks(tmp_path, 50, 3, compute, block_rows=16)
    assert sorted(p.name for p in (tmp_path / BLOCKS_DONE_DIR).iterdir()) == ["block-000000", "block-000001"]
    calls.clear()
    assert write_influence_blocks(tmp_path, 50, 3, lambda a, b: (calls.append(a), A[a:b])[1], block_rows=16) == 2
    assert calls == [32, 48]  # only the unfinished blocks
    np.testing.assert_array_equal(read_influence_matrix(tmp_path), A)
    np.testing.assert_array_equal(read_influence_matrix(tmp_path, slice(10, 40)), A[10:40])
    rows = np.array([49, 0, 17, 16, 3])
    np.testing.assert_array_equal(read_influence_rows(tmp_path, rows), A[rows])
    # the statistics of the resumed pass (finished blocks read back) are the in-memory ones, bit for bit
    for got, want in zip(StoredMatrix(tmp_path).column_stats(), column_stats(A)):
        np.testing.assert_array_equal(got, want)
    # the SQL side reads the same scores from the matrix in place
    import duckdb

    from storage.influence_store import ScoreStream

    con = duckdb.connect()
    con.register("scores", ScoreStream(tmp_path, rows=16))
    got = con.execute("SELECT train_idx, val_idx, score FROM scores ORDER BY ALL").fetchnumpy()
    B = np.zeros_like(A)
    B[got["train_idx"], got["val_idx"]] = got["score"]
    np.testing.assert_array_equal(A, B)
