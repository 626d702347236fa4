"""MIG (Chen et al. 2025, "Automatic Data Selection for Instruction Tuning by Maximizing Information Gain in
Semantic Space"; reference code: yichengchen24/xsample, mig/label.py and mig/sampler.py).

Every pool row carries semantic labels and a quality score. The labels form a
graph: nodes are the labels (sorted), edge weights the cosine similarity of
their embeddings where it is >= `threshold` (0.9), else 0. Information
propagates over it: P = (diag(W) + prop_weight * offdiag(W)), each column
normalised to sum 1. Row i's information vector is v_i = s_i * 1[labels of i]
(divided by the label count when `norm`) propagated, v_i P. The information
of a set with total x = sum v_i is sum_l phi(x_l), phi concave (pow: the
gradient b (x + a)^(b - 1), a = 1e-6, b = 0.8); greedy selection takes, K
times, the unselected row with the largest gain v_i . phi'(x) (ties: lower
row), as the reference's sampler does.

Fast and exact: a pick changes phi'(x) only on the labels its vector
touches, so only the rows sharing one of them can change gain; those are
recomputed (each row's gain is summed the same way alone or with others),
the rest keep the identical number, and the sequence is the full scan's,
ties included.

Offline choices (documented, not the paper's models): labels are the pool's
`labels` field when its records carry one (e.g. InsTag tags shipped with a
dataset), else derived: the row's source and its k-means cluster of the
embeddings (`label_clusters`, default min(256, N / 20)). A label's embedding
is the mean of its rows' centred embeddings, normalised: the paper embeds
the label text with an embedding model (e5-mistral); here labels are placed
where their examples are, in the same space the other selectors use. The
quality score is the pool's `quality` field (>= 0) or the percentile of the
proxy (the base model's mean log-probability per response token) over the
pool, in (0, 1]; the paper uses Deita quality x complexity. Percentiles, not
exp(proxy): on the demo pool exp(proxy) averages 0.81 for code and 0.004 for
one-word answers, and MIG then took 13 of its 18 rows from code; with
percentiles 5, and every source is represented.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field
from scipy.stats import rankdata

from bidsml.clusters import PoolInputOptions, check_pool_inputs, kmeans_labels, pool_embeddings, pool_quality
from bidsml.errors import SelectionError
from bidsml.selectors.registry import SelectorInputs, register_selector

FIELDS = {"quality": "quality", "labels": "labels", "embeddings": "embedding"}


class MIGOptions(PoolInputOptions):
    labels: Literal["auto", "field", "derived"] = Field(
        "auto", description="'auto': the pool's `labels` field when present, else derived (source + cluster)."
    )
    label_clusters: int | None = Field(None, ge=1, description="Clusters for derived labels (default min(256, N/20)).")
    threshold: float = Field(0.9, description="Label graph: cosine similarity below it is no edge (paper: 0.9).")
    phi_a: float = Field(1e-6, gt=0, description="phi'(x) = b (x + a)^(b - 1).")
    phi_b: float = Field(0.8, gt=0, lt=1, description="phi'(x) = b (x + a)^(b - 1); b < 1 keeps phi concave.")
    prop_weight: float = Field(1.0, ge=0, description="Weight of the graph's off-diagonal edges in propagation.")
    norm: bool = Field(False, description="Divide a row's score by its label count (the reference CLI's --norm).")


def row_labels(x: SelectorInputs, opts: MIGOptions, seed: int) -> list[list[str]]:
    """Returns each row's labels: the pool's `labels` field, or source + k-means cluster of the embeddings."""
    field = x.pool.labels
    if opts.labels == "field" or (opts.labels == "auto" and field is not None):
        if field is None:
            raise SelectionError("mig labels: 'field', but the pool's records have no 'labels' field")
        return field
    n_clusters = opts.label_clusters or min(256, max(2, x.n // 20))
    clusters = kmeans_labels(pool_embeddings(x, opts.embeddings), n_clusters, seed, opts.restarts)
    return [[f"source:{s}", f"cluster:{c}"] for s, c in zip(x.pool.sources, clusters.tolist())]


def label_graph(labels: list[list[str]], emb: np.ndarray, threshold: float) -> tuple[list[str], np.ndarray]:
    """Returns (sorted label names, W): cosine similarity of the labels' embeddings, 0 below `threshold`."""
    names = sorted({lab for row in labels for lab in row})
    index = {n: j for j, n in enumerate(names)}
    centred = emb.astype(np.float64) - emb.mean(axis=0, dtype=np.float64)
    sums = np.zeros((len(names), emb.shape[1]))
    for i, row in enumerate(labels):
        for lab in set(row):
            sums[index[lab]] += centred[i]
    E = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-30)
    W = E @ E.T
    W = np.where(W >= threshold, W, 0.0)
    np.fill_diagonal(W, 1.0)  # a label is itself (the reference's normalised embeddings give 1 up to rounding)
    return names, W


def propagation(W: np.ndarray, prop_weight: float) -> np.ndarray:
    """Returns P: W with off-diagonal edges weighted by `prop_weight`, each column normalised to sum 1."""
    eye = np.eye(len(W))
    P = W * eye + W * (1 - eye) * prop_weight
    return P / P.sum(axis=0)


def information_vectors(
    labels: list[list[str]], names: list[str], score: np.ndarray, P: np.ndarray, norm: bool
) -> np.ndarray:
    """Returns (N, L) v_i P: each row's score on its labels (over the count when `norm`), propagated."""
    index = {n: j for j, n in enumerate(names)}
    V = np.zeros((len(labels), len(names)))
    for i, row in enumerate(labels):
        for lab in row:
            V[i, index[lab]] = score[i] / len(row) if norm else score[i]
    return V @ P


def gains(Vp: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Returns the information gain v_i . g of each given row. Summed per row (numpy's pairwise sum), so a row's
    gain is the same number whether computed alone or with others: the lazy and full greedy agree bit for bit."""
    return (Vp * g).sum(axis=-1)


def d_phi(x: np.ndarray, a: float, b: float) -> np.ndarray:
    return b * (x + a) ** (b - 1)


def greedy(Vp: np.ndarray, k: int, a: float, b: float) -> np.ndarray:
    """Returns the K rows the greedy maximisation of sum phi(x) picks, in order (ties: lower row).

    The reference rescans every row every step. Here a pick changes x, so g = phi'(x), only on the labels its
    vector touches; a row with no weight on those labels has every product of its gain unchanged, so its gain,
    summed in the same order, is the same number. Only the rows sharing a touched label are recomputed.
    """
    n, L = Vp.shape
    x = np.zeros(L)
    g = d_phi(x, a, b)
    gain = gains(Vp, g)
    rows_of = [np.flatnonzero(Vp[:, j]) for j in range(L)]  # the rows with weight on each label
    out = np.empty(k, dtype=np.int64)
    taken = np.zeros(n, dtype=bool)
    for step in range(k):
        i = int(np.argmax(gain))  # the first of the largest, as torch.argmax in the reference
        out[step] = i
        taken[i] = True
        gain[i] = -np.inf
        touched = np.flatnonzero(Vp[i])
        if len(touched) == 0:
            continue
        x[touched] += Vp[i, touched]
        g[touched] = d_phi(x[touched], a, b)
        rows = np.unique(np.concatenate([rows_of[j] for j in touched]))
        rows = rows[~taken[rows]]
        gain[rows] = gains(Vp[rows], g)
    return out


def mig_vectors(x: SelectorInputs, seed: int) -> np.ndarray:
    """Returns the propagated information vectors (N, L) of the pool rows."""
    opts: MIGOptions = x.options
    labels = row_labels(x, opts, seed)
    empty = [i for i, row in enumerate(labels) if not row]
    score = pool_quality(x, opts.quality)
    if opts.quality == "proxy" or (opts.quality == "auto" and x.pool.quality is None):
        score = rankdata(score) / len(score)  # the proxy's percentile in (0, 1]: MIG needs scores >= 0
    if (score < 0).any():
        raise SelectionError(
            f"mig needs quality >= 0; pool record {int(np.flatnonzero(score < 0)[0])} has a negative one"
        )
    names, W = label_graph(labels, pool_embeddings(x, opts.embeddings), opts.threshold)
    if not names:
        raise SelectionError("mig: no pool record has a label")
    Vp = information_vectors(labels, names, score, propagation(W, opts.prop_weight), opts.norm)
    if empty:  # rows without labels carry no information (gain 0): picked last, lower rows first
        Vp[empty] = 0.0
    return Vp


@register_selector(
    "mig",
    needs=("representations", "pool"),
    options=MIGOptions,
    check=lambda recipe, opts: check_pool_inputs(recipe, opts, "mig", FIELDS),
)
def select_mig(x: SelectorInputs, k: int, seed: int) -> np.ndarray:
    """MIG: greedy information gain over a label graph, weighted by quality (diversity and quality)."""
    o = x.options
    return greedy(mig_vectors(x, seed), k, o.phi_a, o.phi_b)
