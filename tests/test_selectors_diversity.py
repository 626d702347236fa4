"""The seed literature's other selectors (random-balanced, kmq, kmq-iterative, mig) against small transcriptions
of their reference algorithms (RDS+; for-ai/iterative-data-selection; yichengchen24/xsample) on hand-made inputs."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from bidsml.clusters import cluster_members, kmeans_labels
from bidsml.errors import SelectionError
from bidsml.selectors import PoolFields, SelectorInputs, run_selector, selector_options
from bidsml.selectors.balanced import balanced_counts
from bidsml.selectors.registry import round_sizes, selector_rounds
from bidsml.selectors.mig import greedy, label_graph, mig_vectors


def inputs(method, n=60, d=6, sources=None, quality=None, labels=None, seed=0, **options):
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, d)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    reps = {"train_weighted": emb, "train_quality": -rng.random(n) * 3}
    pool = PoolFields(sources=sources or [f"s{i % 3}" for i in range(n)], quality=quality, labels=labels)
    return SelectorInputs(tasks=["t"], representations=reps, pool=pool, options=selector_options(method, options))


# ---- random-balanced --------------------------------------------------------------------------------------------


def test_balanced_counts_share_equally_a_small_source_gives_all_the_remainder_goes_to_the_largest():
    assert balanced_counts({"a": 10, "b": 3, "c": 10}, 15) == {"a": 6, "b": 3, "c": 6}
    assert balanced_counts({"a": 10, "b": 10, "c": 4}, 8) == {"a": 3, "b": 3, "c": 2}  # remainder: a, b (size, name)
    assert balanced_counts({"a": 1, "b": 1, "c": 50}, 20) == {"a": 1, "b": 1, "c": 18}
    assert balanced_counts({"x": 5}, 5) == {"x": 5}


def test_random_balanced_equals_a_transcription_and_is_seeded():
    sources = ["a"] * 10 + ["b"] * 3 + ["c"] * 10
    x = inputs("random-balanced", n=23, sources=sources)
    rows = run_selector("random-balanced", x, 15, seed=4)
    rng = np.random.default_rng(4)  # transcription: per source (sorted), a seeded permutation's first `count`
    src = np.asarray(sources)
    ref = np.concatenate([rng.permutation(np.flatnonzero(src == s))[:c] for s, c in (("a", 6), ("b", 3), ("c", 6))])
    assert rows.tolist() == ref.tolist()
    assert Counter(src[rows]) == {"a": 6, "b": 3, "c": 6}
    assert run_selector("random-balanced", x, 15, seed=4).tolist() == rows.tolist()
    assert run_selector("random-balanced", x, 15, seed=5).tolist() != rows.tolist()


# ---- kmq ----------------------------------------------------------------------------------------------------------


def reference_kmq(labels, n_clusters, scores, budget, rng):
    """KMenasRandomDeita.select's sampling loop (its softmax written as exp / sum)."""
    final = np.array([], dtype=np.int64)
    for i in range(n_clusters):
        idx = np.where(labels == i)[0]
        s = np.exp(scores[idx])
        p = s / np.sum(s)
        size = np.minimum(int(budget / n_clusters), len(idx))
        final = np.concatenate((final, rng.choice(idx, size=size, replace=False, p=p)))
    return final


def test_kmq_equals_the_reference_loop_then_fills_to_the_budget():
    x = inputs("kmq", n=80, clusters=4)
    rows = run_selector("kmq", x, 20, seed=3)
    labels = kmeans_labels(x.representations["train_weighted"], 4, 3)
    ref = reference_kmq(labels, 4, x.representations["train_quality"], 20, np.random.default_rng(3))
    assert len(ref) == 20 and rows.tolist() == ref.tolist()  # 4 clusters x 5: the reference exactly
    assert run_selector("kmq", x, 20, seed=3).tolist() == rows.tolist()  # seeded


def test_kmq_a_budget_larger_than_a_cluster_takes_it_whole_and_draws_the_rest_from_the_others():
    n = 40
    emb = np.zeros((n, 2), dtype=np.float32)
    emb[:3] = [1, 0]  # a cluster of 3 rows
    emb[3:] = [0, 1]
    emb[3:, 0] = np.linspace(-0.01, 0.01, n - 3)
    x = inputs("kmq", n=n, clusters=2)
    x.representations["train_weighted"] = emb
    rows = run_selector("kmq", x, 10, seed=0)
    labels = kmeans_labels(emb, 2, 0)
    small = labels[0]
    assert (labels == small).sum() == 3
    ref = reference_kmq(labels, 2, x.representations["train_quality"], 10, np.random.default_rng(0))
    assert len(ref) == 8  # the reference stops short: 3 + 5
    assert rows[:8].tolist() == ref.tolist() and len(set(rows.tolist())) == 10
    assert set(np.flatnonzero(labels == small)) <= set(rows.tolist())  # the small cluster whole
    assert (labels[rows[8:]] != small).all()


def test_kmq_samples_by_quality_within_a_cluster():
    n = 200
    q = np.zeros(n)
    q[:20] = 8.0  # 20 rows far better than the rest
    x = inputs("kmq", n=n, quality=q, clusters=1)
    rows = run_selector("kmq", x, 20, seed=0)
    assert np.isin(rows, np.arange(20)).mean() > 0.9


def test_kmq_uses_a_pool_embedding_field_over_the_representations():
    x = inputs("kmq", n=30, clusters=3)
    field = np.repeat(np.eye(3, dtype=np.float32), 10, axis=0)
    x.pool.embedding = field
    rows = run_selector("kmq", x, 9, seed=0)
    assert Counter(np.arange(30)[rows] // 10) == {0: 3, 1: 3, 2: 3}  # one cluster per block of the field


# ---- kmq-iterative ------------------------------------------------------------------------------------------------


def reference_iter_round(labels, n_clusters, selected, reward, size, rng):
    """iter.py's select_new_iter (exp of the cluster mean, normalised; counts with replacement; uniform rows)."""
    means = np.asarray([reward[labels[selected] == c].mean() for c in range(n_clusters)])
    p = np.exp(means) / np.exp(means).sum()
    counts = Counter(rng.choice(n_clusters, size=size, p=p, replace=True).tolist())
    remaining = np.setdiff1d(np.arange(len(labels)), selected)
    new = []
    for i in range(n_clusters):
        idx = remaining[labels[remaining] == i]
        new.extend(rng.choice(idx, size=min(counts[i], len(idx)), replace=False))
    return np.concatenate([selected, np.asarray(new, dtype=np.int64)])


def test_kmq_iterative_rounds_equal_the_reference():
    n, k = 120, 24
    x = inputs("kmq-iterative", n=n, clusters=4, rounds=3)
    labels = kmeans_labels(x.representations["train_weighted"], 4, 7)
    assert round_sizes(k, 3) == [8, 16, 24] and selector_rounds("kmq-iterative", x.options) == 3
    assert selector_rounds("kmq") == selector_rounds("bids") == 1  # rounds are the selector's declaration
    with pytest.raises(SelectionError, match="fine-tunes between rounds"):
        run_selector("kmq-iterative", x, k, seed=7)
    x.extra = {"round": 3}
    with pytest.raises(SelectionError, match=r"runs rounds 0\.\.2; round 3 asked"):
        run_selector("kmq-iterative", x, k, seed=7)
    x.extra = {"round": 0}  # the budget is the whole selection's K: the selector takes its share per round
    r0 = run_selector("kmq-iterative", x, k, seed=7)
    assert len(r0) == 8 and x.extra["final_k"] == k
    rng = np.random.default_rng([7, 0])  # KMeansIter.select: floor(K / R / k) per cluster, uniformly
    ref0 = np.concatenate([rng.choice(np.where(labels == i)[0], size=2, replace=False) for i in range(4)])
    assert r0.tolist() == ref0.tolist()
    loss = np.linspace(0.5, 3.0, len(r0))
    x.extra = {"round": 1, "previous": r0, "losses": loss}
    r1 = run_selector("kmq-iterative", x, k, seed=7)
    ref1 = reference_iter_round(labels, 4, r0, loss, 8, np.random.default_rng([7, 1]))
    assert r1.tolist() == ref1.tolist() and r1[:8].tolist() == r0.tolist()


def test_kmq_iterative_draws_again_when_a_cluster_runs_out():
    n = 30
    emb = np.zeros((n, 2), dtype=np.float32)
    emb[:4] = [1, 0]
    emb[4:] = [0, 1]
    emb[4:, 0] = np.linspace(-0.01, 0.01, n - 4)
    x = inputs("kmq-iterative", n=n, clusters=2, rounds=2)
    x.representations["train_weighted"] = emb
    labels = kmeans_labels(emb, 2, 0)
    small = np.flatnonzero(labels == labels[0])
    prev = np.asarray([small[0], small[1], 10, 11])
    loss = np.where(np.isin(prev, small), 50.0, 0.0)  # the small cluster "needs" everything, has 2 rows left
    x.extra = {"round": 1, "previous": prev, "losses": loss}  # the last of 2 rounds: all 12 rows
    rows = run_selector("kmq-iterative", x, 12, seed=0)
    assert len(set(rows.tolist())) == 12 and set(small) <= set(rows.tolist())


# ---- mig ------------------------------------------------------------------------------------------------------


def reference_mig(labels, scores, W, k, a=1e-6, b=0.8, prop_weight=1.0, norm=False):
    """xsample's MIGSampler.sample (calc_prop_matrix, vectorize, the full argmax loop), in numpy."""
    names = sorted({lab for row in labels for lab in row})
    n = len(W)
    mask = np.eye(n)
    P = W * mask + W * (1 - mask) * prop_weight
    P = P / P.sum(axis=0)
    V = np.zeros((len(labels), len(names)))
    for i, row in enumerate(labels):
        for lab in row:
            V[i, names.index(lab)] = scores[i] / len(row) if norm else scores[i]
    return _full_scan(V @ P, k, a, b)


def test_fast_greedy_picks_the_full_scan_sequence_with_ties_and_empty_rows():
    rng = np.random.default_rng(0)
    Vp = rng.random((300, 12)) * (rng.random((300, 12)) < 0.3)
    Vp[50] = Vp[10]  # exact ties: the lower row first
    Vp[200:210] = 0.0  # rows with no information
    out = greedy(Vp, 300, 1e-6, 0.8).tolist()
    assert out == _full_scan(Vp, 300)
    zero = np.flatnonzero(~Vp.any(axis=1)).tolist()  # 200..209 and any random all-zero row
    assert out.index(10) < out.index(50) and out[-len(zero) :] == zero


def _full_scan(Vp, k, a=1e-6, b=0.8):
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
    return out


@pytest.mark.parametrize("norm", [False, True])
def test_mig_with_labels_equals_the_reference_sampler(norm):
    labels = [["math"], ["math", "algebra"], ["code"], ["code", "python"], ["poetry"], ["math"], [], ["algebra"]] * 4
    q = np.asarray([3.0, 2.5, 1.0, 4.0, 0.5, 3.0, 9.0, 2.0] * 4)
    q[8:] += np.arange(24) * 0.01  # repeats differ a little; rows 0..7 and their copies stay distinct
    x = inputs("mig", n=32, quality=q, labels=labels, norm=norm, threshold=0.5)
    rows = run_selector("mig", x, 12, seed=0)
    names, W = label_graph(labels, x.representations["train_weighted"], 0.5)
    assert rows.tolist() == reference_mig(labels, q, W, 12, norm=norm)
    assert 6 not in rows.tolist()  # an example without labels carries no information
    # the first pick is the best-scored labelled row; the next ones spread over labels
    assert len({lab for r in rows[:5] for lab in labels[r]}) >= 4


def test_mig_derived_labels_are_source_and_cluster_and_quality_is_positive():
    x = inputs("mig", n=60, label_clusters=4)
    Vp = mig_vectors(x, seed=0)
    assert Vp.shape == (60, 3 + 4) and (Vp >= 0).all()
    q = -np.ones(60)
    bad = inputs("mig", n=60, quality=q)
    with pytest.raises(SelectionError, match="quality >= 0"):
        run_selector("mig", bad, 5, seed=0)


def test_cluster_members_equal_np_where():
    labels = np.asarray([2, 0, 2, 1, 0, 2])
    assert [m.tolist() for m in cluster_members(labels, 3)] == [np.where(labels == c)[0].tolist() for c in range(3)]


def test_bench_select_smoke_finds_the_same_selection_as_the_reference_loops():
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parents[1]
    out = subprocess.run(
        [sys.executable, "bench/select.py", "--only", "mig,kmq", "--diversity-n", "3000", "--diversity-d", "32"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert last["mig_identical"] and last["kmq_identical"] and {"mig_s_3k", "kmq_s_3k"} <= set(last)


def test_kmq_reads_embeddings_from_a_users_file_and_refuses_a_wrong_shape(tmp_path):
    field = np.repeat(np.eye(3, dtype=np.float32), 10, axis=0)
    path = tmp_path / "emb.npy"
    np.save(path, field)
    x = inputs("kmq", n=30, clusters=3, embeddings=str(path))
    rows = run_selector("kmq", x, 9, seed=0)
    assert Counter(np.arange(30)[rows] // 10) == {0: 3, 1: 3, 2: 3}  # the file's three blocks are the clusters
    np.save(path, field[:20])
    with pytest.raises(SelectionError, match=r"emb.npy: shape \(20, 3\), expected \(30, d\)"):
        run_selector("kmq", inputs("kmq", n=30, clusters=3, embeddings=str(path)), 9, seed=0)


def test_kmq_default_clusters_hold_about_ten_rows_each_never_one_per_row():
    from bidsml.selectors.kmq import KMQIterativeOptions, KMQOptions, iterative_clusters, kmq_cluster_count

    assert kmq_cluster_count(305, KMQOptions()) == 30  # not 305 clusters of one row
    assert kmq_cluster_count(100_000, KMQOptions()) == 1024 and kmq_cluster_count(5, KMQOptions()) == 1
    assert (
        kmq_cluster_count(305, KMQOptions(clusters=50)) == 50 and kmq_cluster_count(20, KMQOptions(clusters=50)) == 20
    )
    assert iterative_clusters(305, KMQIterativeOptions()) == 10  # 101 rows per round / 10
    x = inputs("kmq", n=400)
    rows = run_selector("kmq", x, 100, seed=0)
    labels = kmeans_labels(x.representations["train_weighted"], 10, 0)
    assert sorted(Counter(labels[rows].tolist()).values()) == [10] * 10  # 10 clusters x 10 rows


# ---- bm25 (the lexical control) ---------------------------------------------------------------------------------


def _lucene_bm25(docs: list[list[str]], query: list[str], k1=1.5, b=0.75) -> np.ndarray:
    """A transcription of Lucene's BM25 (idf = ln(1 + (N - df + 0.5) / (df + 0.5)), no (k1 + 1) factor)."""
    n, avgdl = len(docs), np.mean([len(d) for d in docs])
    out = np.zeros(n)
    for term in set(query):
        df = sum(term in d for d in docs)
        if df == 0:
            continue
        idf = np.log(1 + (n - df + 0.5) / (df + 0.5))
        for i, d in enumerate(docs):
            tf = d.count(term)
            out[i] += idf * tf / (tf + k1 * (1 - b + b * len(d) / avgdl))
    return out


def test_bm25_scores_equal_lucene_bm25_and_the_selection_balances_tasks_as_bids_does():
    from bidsml.selection import bids_iterate, normalize_columns
    from bidsml.selectors.bm25 import bm25_scores

    docs = [
        "cats purr softly",
        "dogs bark loudly at cats",
        "integrate the function",
        "derivative of function",
        "function returns list",
        "cats sleep",
        "the weather today",
        "compile python code",
        "python list code",
    ]
    queries = ["why do cats purr", "function derivative", "python code list"]
    S = bm25_scores(docs, queries, selector_options("bm25", {"stopwords": None}))
    for j, q in enumerate(queries):
        ref = _lucene_bm25([d.split() for d in docs], q.split())
        np.testing.assert_allclose(S[:, j], ref, rtol=1e-5, atol=1e-6)
    x = SelectorInputs(
        tasks=["pets", "math", "code"], texts={"train": docs, "val": queries}, options=selector_options("bm25")
    )
    rows = run_selector("bm25", x, 3, seed=0)
    Z, _ = normalize_columns(bm25_scores(docs, queries))
    assert rows.tolist() == bids_iterate(Z, 3).tolist()
    assert {0, 3, 8} == set(rows.tolist())  # one row per query's best match: balanced across the three tasks
    with pytest.raises(SelectionError, match="shares a word"):
        run_selector(
            "bm25", SelectorInputs(tasks=["t"], texts={"train": ["apple pie", "cherry tart"], "val": ["zzz"]}), 1
        )
    assert not bm25_scores(["a b", "c d"], ["a"]).any()  # no word in the pool (bm25s keeps 2+ letter words)
