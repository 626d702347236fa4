"""kMQ and its iterative refinement (Yu et al. 2024, "Diversify and Conquer"; reference code:
for-ai/iterative-data-selection, selection/methods/{kmeansrandom,kmeansiter}.py and selection/iter.py).

kmq: k-means clusters of the pool's embeddings; from every cluster floor(K/k)
rows drawn without replacement with probability softmax(quality) within the
cluster (as the reference's KMenasRandomDeita). The reference returns fewer
than K rows when clusters are small or k does not divide K; here what is left
is drawn the same way, in passes: an equal share per cluster with rows left,
and a share of 0 gives one row each to the clusters with most rows left
(ties: lower cluster). Clusters: K / `rows_per_cluster` (10), at most the
paper's 1024: the paper draws 10k+ rows from 1024 clusters, about 10 per
cluster; with k = K every cluster gives one row and kMQ is stratified random.

kmq-iterative (the reference's KMeansIter + iter.py): R rounds. Round 0 draws
floor(K/R/k) rows per cluster uniformly (and fills to K/R as above); after
each round a LoRA is fine-tuned on the rows so far (a cached `finetune`
artifact), every selected row is scored by its mean response NLL under it
(the reference's `ppl` criterion; its reward-model criterion needs models
this offline project does not have), clusters are weighted by softmax of
their selected rows' mean score (clusters the model has not learned get
more), and the next K/R rows are drawn: cluster counts from that
distribution (with replacement), rows uniformly within each cluster among
the unselected (a cluster with too few rows left: the shortfall is drawn
again over the clusters with rows left). Clusters: (K/R) / `rows_per_cluster`,
at most the reference's 512 (so round 0 covers every cluster, ~10 rows each).
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from bidsml.clusters import (
    PoolInputOptions,
    check_pool_inputs,
    cluster_members,
    kmeans_labels,
    pool_embeddings,
    pool_quality,
    softmax,
)
from bidsml.errors import SelectionError
from bidsml.selectors.registry import SelectorInputs, register_selector

FIELDS = {"quality": "quality", "embeddings": "embedding"}


class KMQOptions(PoolInputOptions):
    clusters: int | None = Field(
        None, ge=1, description="k-means clusters (default: K / rows_per_cluster, at most the paper's 1024)."
    )
    rows_per_cluster: int = Field(10, ge=1, description="Default clusters: the budget over this (the paper's ~10).")


class KMQIterativeOptions(PoolInputOptions):
    clusters: int | None = Field(
        None, ge=1, description="k-means clusters (default: K / rounds / rows_per_cluster, at most 512)."
    )
    rows_per_cluster: int = Field(10, ge=1, description="Default clusters: a round's rows over this (~10).")
    rounds: int = Field(3, ge=1, description="Rounds (the reference's 3); a fine-tune after each but the last.")


def draw(rng: np.random.Generator, rows: np.ndarray, size: int, quality: np.ndarray | None) -> np.ndarray:
    """Returns `size` of `rows` drawn without replacement, with probability softmax(quality[rows]) or uniformly."""
    if quality is None:
        return rng.choice(rows, size=size, replace=False)
    p = softmax(quality[rows])
    if np.count_nonzero(p) < size:  # exp underflow on a very wide quality range: keep every row drawable
        p = np.maximum(p, np.finfo(float).tiny)
        p /= p.sum()
    return rng.choice(rows, size=size, replace=False, p=p)


def fill_clusters(
    members: list[np.ndarray],
    want: int,
    rng: np.random.Generator,
    quality: np.ndarray | None,
    taken: np.ndarray,
    first_share: int | None = None,
) -> list[np.ndarray]:
    """Returns draws (one array per pass and cluster) adding `want` rows not yet `taken` (updated in place).

    Pass 1 draws `first_share` (default want // clusters) from every cluster in order, as the reference; later
    passes share what is left equally among the clusters with rows left, a share of 0 going one each to those
    with most rows left (ties: lower cluster)."""
    out: list[np.ndarray] = []
    left, share = want, first_share
    while left > 0:
        avail = [m[~taken[m]] for m in members]
        open_ = [c for c, a in enumerate(avail) if len(a)]
        if not open_:
            raise SelectionError(f"the pool has no rows left to draw {left} more")
        if share is None:
            share = left // len(open_)
        chosen = open_ if share > 0 else sorted(open_, key=lambda c: (-len(avail[c]), c))[:left]
        for c in chosen:
            size = min(max(share, 1), len(avail[c]), left)
            if size <= 0:
                continue
            got = draw(rng, avail[c], size, quality)
            taken[got] = True
            out.append(got)
            left -= size
        share = None
    return out


def kmq_clusters(x: SelectorInputs, n_clusters: int, seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Returns (labels, members) of the k-means clustering of the pool's embeddings."""
    labels = kmeans_labels(pool_embeddings(x, x.options.embeddings), n_clusters, seed, x.options.restarts)
    k = int(labels.max()) + 1
    return labels, cluster_members(labels, k)


@register_selector(
    "kmq",
    needs=("representations", "pool"),
    options=KMQOptions,
    check=lambda recipe, opts: check_pool_inputs(recipe, opts, "kmq", FIELDS),
)
def select_kmq(x: SelectorInputs, k: int, seed: int) -> np.ndarray:
    """kMQ: k-means clusters of embeddings, each sampled by softmax(quality) (diversity, then quality)."""
    n_clusters = kmq_cluster_count(k, x.options)
    _, members = kmq_clusters(x, n_clusters, seed)
    q = pool_quality(x, x.options.quality)
    rng = np.random.default_rng(seed)
    taken = np.zeros(x.n, dtype=bool)
    return np.concatenate(fill_clusters(members, k, rng, q, taken, first_share=k // len(members)))


def kmq_cluster_count(k: int, opts: KMQOptions) -> int:
    """Returns kmq's cluster count at budget K: the options' `clusters` (at most K), else K / rows_per_cluster, at
    most 1024 and at least 1."""
    if opts.clusters:
        return min(opts.clusters, k)
    return max(1, min(1024, k // opts.rows_per_cluster))


def iterative_clusters(k_final: int, opts: KMQIterativeOptions) -> int:
    per_round = k_final // opts.rounds
    return max(1, min(opts.clusters, per_round) if opts.clusters else min(512, per_round // opts.rows_per_cluster))


@register_selector(
    "kmq-iterative",
    needs=("representations", "pool"),
    options=KMQIterativeOptions,
    check=lambda recipe, opts: check_pool_inputs(recipe, opts, "kmq-iterative", FIELDS),
    rounds=lambda opts: opts.rounds,
)
def select_kmq_iterative(x: SelectorInputs, k: int, seed: int) -> np.ndarray:
    """kMQ iterative: rounds of k-means sampling reweighted by a fine-tune's loss on each cluster."""
    rnd = x.extra["round"]  # the registry checked it; k: the rows after this round (round_sizes)
    k_final = int(x.extra["final_k"])
    n_clusters = iterative_clusters(k_final, x.options)
    labels, members = kmq_clusters(x, n_clusters, seed)
    rng = np.random.default_rng([seed, rnd])
    taken = np.zeros(x.n, dtype=bool)
    if rnd == 0:
        first = k_final // x.options.rounds // len(members)
        return np.concatenate(fill_clusters(members, k, rng, None, taken, first_share=first))
    prev = np.asarray(x.extra["previous"], dtype=np.int64)
    loss = np.asarray(x.extra["losses"], dtype=np.float64)  # mean response NLL of each previous row
    taken[prev] = True
    weights = cluster_weights(labels[prev], loss, len(members))
    return np.concatenate([prev, *resample(members, k - len(prev), rng, weights, taken)])


def cluster_weights(prev_clusters: np.ndarray, loss: np.ndarray, n_clusters: int) -> np.ndarray:
    """Returns p over clusters: softmax of the mean loss of each cluster's selected rows (0 where it has none)."""
    counts = np.bincount(prev_clusters, minlength=n_clusters)
    means = np.bincount(prev_clusters, weights=loss, minlength=n_clusters) / np.maximum(counts, 1)
    p = np.zeros(n_clusters)
    have = counts > 0
    p[have] = softmax(means[have])
    return p


def resample(
    members: list[np.ndarray], want: int, rng: np.random.Generator, p: np.ndarray, taken: np.ndarray
) -> list[np.ndarray]:
    """Returns draws adding `want` rows: cluster counts ~ p (with replacement), rows uniform within a cluster;
    a shortfall (clusters with too few rows left) is drawn again over the clusters with rows left."""
    out: list[np.ndarray] = []
    left = want
    while left > 0:
        avail = [m[~taken[m]] for m in members]
        q = p * np.asarray([len(a) > 0 for a in avail])
        if q.sum() == 0:  # every weighted cluster is used up: the others, equally
            q = np.asarray([len(a) > 0 for a in avail], dtype=float)
        if q.sum() == 0:
            raise SelectionError(f"the pool has no rows left to draw {left} more")
        counts = np.bincount(rng.choice(len(members), size=left, p=q / q.sum(), replace=True), minlength=len(members))
        for c in range(len(members)):
            size = min(int(counts[c]), len(avail[c]))
            if size:
                got = rng.choice(avail[c], size=size, replace=False)
                taken[got] = True
                out.append(got)
                left -= size
    return out
