"""PASER ("Post-training dAta Selection for Efficient pruned large language model Recovery", 2025;
reference code: BokwaiHo/PASER, paser.py): recovery data for a pruned model.

1. Semantic-structural clustering: each row's instruction embedded (the sentence encoder all-MiniLM-L6-v2, as
   the paper; the representations step's `sentence` embeddings, else the base model's hidden states, a proxy);
   Gaussian affinity A = exp(-d^2 / 2 sigma^2), sigma the median pairwise distance; random-walk Laplacian
   L = I - D^-1 A; its eigenvectors of the `num_clusters` smallest eigenvalues; NMF of |V V^T| with
   `num_clusters` components (random init, the seed); each row's cluster the argmax of its NMF weights.
2. Capability degradation of a cluster: the mean over its rows of the JSD between the pruned and the original
   model on the instruction, summed over positions (the `degradation` step).
3. Budget per cluster proportional to its degradation.
4. Within a cluster (clusters in ascending id), rows by JSD / ln((instruction tokens + response characters)^2),
   highest first (ties: lower row); a row is skipped when two of its concepts (RAKE keyphrases of its whole
   text) are both in the concept consistency graph but not joined; a kept row joins its concepts as a clique.

Where this differs from the published code, and why:
- The eigenvectors: the reference calls scipy's `eigsh` (a symmetric solver) on L = I - D^-1 A, which is not
  symmetric; here they come from the symmetric I - D^-1/2 A D^-1/2 (same eigenvalues), mapped back
  (v = D^-1/2 u, unit norm): the random-walk Laplacian's true eigenvectors, and deterministic.
- Budgets: the reference floors B x share per cluster, so they sum to less than B; here the remainders go to the
  largest fractional parts (ties: lower cluster), so the method returns exactly B rows like every selector. A
  cluster that cannot fill its budget (too few rows, or the graph refuses them) leaves the rest, and then the
  shortfall is filled by the unselected rows of highest score that the graph accepts, then by the highest
  scores (the reference returns fewer rows).
- RAKE runs offline: NLTK's English stopword list is shipped here (the reference downloads NLTK's corpus), and
  sentences split at . ! ? followed by space (the reference: NLTK's punkt model); words by NLTK's
  wordpunct_tokenize, as the reference.
"""

from __future__ import annotations

import math
import re
from functools import cache

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from bidsml.clusters import pool_embeddings
from bidsml.errors import SelectionError
from bidsml.selectors.registry import SelectorInputs, register_selector

# NLTK's English stopword list (the `stopwords` corpus, 179 words), shipped: the corpus is a download
NLTK_ENGLISH_STOPWORDS = frozenset(
    """i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself yourselves he him his
    himself she she's her hers herself it it's its itself they them their theirs themselves what which who whom
    this that that'll these those am is are was were be been being have has had having do does did doing a an the
    and but if or because as until while of at by for with about against between into through during before after
    above below to from up down in out on off over under again further then once here there when where why how all
    any both each few more most other some such no nor not only own same so than too very s t can will just don
    don't should should've now d ll m o re ve y ain aren aren't couldn couldn't didn didn't doesn doesn't hadn
    hadn't hasn hasn't haven haven't isn isn't ma mightn mightn't mustn mustn't needn needn't shan shan't shouldn
    shouldn't wasn wasn't weren weren't won won't wouldn wouldn't""".split()
)
MAX_ROWS = 20_000  # the clustering holds N x N affinities (float64): 3.2 GB at this size


class PASEROptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    num_clusters: int = Field(10, ge=1, description="Clusters of the semantic-structural clustering (the paper's 10).")
    embeddings: str = Field(
        "auto",
        description="'auto': the sentence encoder's instruction embeddings when installed, else the base model's "
        "hidden states (a proxy); 'sentence'; 'representations'.",
    )


def diffusion_embedding(E: np.ndarray, k: int) -> np.ndarray:
    """Returns (N, k) unit-norm eigenvectors of the random-walk Laplacian of E's Gaussian affinity, for its k
    smallest eigenvalues (sigma: the median pairwise distance)."""
    from sklearn.metrics import pairwise_distances

    d = pairwise_distances(np.asarray(E, dtype=np.float64))
    sigma = float(np.median(d)) or 1.0
    A = np.exp(-(d**2) / (2 * sigma**2))
    s = 1.0 / np.sqrt(A.sum(axis=1))
    L_sym = np.eye(len(A)) - s[:, None] * A * s[None, :]
    _, U = np.linalg.eigh(L_sym)  # ascending eigenvalues
    V = s[:, None] * U[:, :k]
    return V / np.linalg.norm(V, axis=0, keepdims=True)


def nmf_clusters(V: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Returns each row's cluster: argmax of its weights in an NMF (k components) of |V V^T|."""
    from sklearn.decomposition import NMF

    S = np.abs(V @ V.T)
    W = NMF(n_components=k, init="random", random_state=seed, max_iter=500).fit_transform(S)
    return np.argmax(W, axis=1)


def allocate(k: int, degradation: dict[int, float]) -> dict[int, int]:
    """Returns rows per cluster: K x its share of the summed degradation, floored, the remainder to the largest
    fractional parts (ties: lower cluster); sums to K."""
    ids = sorted(degradation)
    total = sum(degradation[c] for c in ids)
    share = {c: (k * degradation[c] / total if total > 0 else k / len(ids)) for c in ids}
    out = {c: int(math.floor(share[c])) for c in ids}
    for c in sorted(ids, key=lambda c: (-(share[c] - out[c]), c))[: k - sum(out.values())]:
        out[c] += 1
    return out


def row_scores(jsd: np.ndarray, n_tokens: np.ndarray, output_chars: np.ndarray) -> np.ndarray:
    """Returns each row's degradation per cost: JSD / ln((instruction tokens + response characters)^2)."""
    cost = np.log((np.asarray(n_tokens, dtype=np.float64) + np.asarray(output_chars, dtype=np.float64)) ** 2)
    return np.asarray(jsd, dtype=np.float64) / np.maximum(cost, 1e-12)


@cache
def _rake():
    from nltk.tokenize import wordpunct_tokenize
    from rake_nltk import Rake

    def sentences(text: str) -> list[str]:
        return [s for s in re.split(r"(?<=[.!?])\s+", text) if s]

    return Rake(stopwords=set(NLTK_ENGLISH_STOPWORDS), sentence_tokenizer=sentences, word_tokenizer=wordpunct_tokenize)


def concepts(text: str) -> frozenset[str]:
    """Returns a text's concepts: every RAKE keyphrase (lower-cased)."""
    rake = _rake()
    rake.extract_keywords_from_text(text)
    return frozenset(rake.get_ranked_phrases())


class ConceptGraph:
    """The concept consistency graph: concepts as nodes, an edge between concepts kept rows have shared."""

    def __init__(self) -> None:
        self.adj: dict[str, set[str]] = {}

    def consistent(self, cs: frozenset[str]) -> bool:
        """Whether no two of the concepts are both in the graph without an edge between them."""
        known = [c for c in cs if c in self.adj]
        return all(b in self.adj[a] for i, a in enumerate(known) for b in known[i + 1 :])

    def add(self, cs: frozenset[str]) -> None:
        """Joins the concepts as a clique (a single concept adds nothing: nodes come with edges, as networkx)."""
        if len(cs) < 2:
            return
        for a in cs:
            self.adj.setdefault(a, set()).update(c for c in cs if c != a)


def select_in_clusters(
    clusters: np.ndarray, budgets: dict[int, int], scores: np.ndarray, row_concepts: list[frozenset[str]]
) -> list[int]:
    """Returns the rows PASER's loop keeps: clusters in ascending id, each's rows by score (highest first, ties:
    lower row) until its budget, skipping rows the concept graph refuses; then fills to sum(budgets) (see the
    module docstring)."""
    graph, out, taken = ConceptGraph(), [], np.zeros(len(scores), dtype=bool)
    for c in sorted(budgets):
        members = np.flatnonzero(clusters == c)
        members = members[np.lexsort((members, -scores[members]))]
        kept = 0
        for i in members:
            if kept >= budgets[c]:
                break
            if graph.consistent(row_concepts[i]):
                out.append(int(i))
                taken[i] = True
                graph.add(row_concepts[i])
                kept += 1
    want = sum(budgets.values())
    order = np.lexsort((np.arange(len(scores)), -scores))
    for strict in (True, False):
        for i in order:
            if len(out) >= want:
                return out
            if not taken[i] and (not strict or graph.consistent(row_concepts[i])):
                out.append(int(i))
                taken[i] = True
                graph.add(row_concepts[i])
    return out


@register_selector(
    "paser",
    needs=("representations", "text", "degradation"),
    options=PASEROptions,
    check=lambda recipe, opts: _check(recipe),
)
def select_paser(x: SelectorInputs, k: int, seed: int) -> np.ndarray:
    """PASER: clusters of instruction embeddings, budgets by the pruned model's degradation, concept-consistent."""
    if x.n > MAX_ROWS:
        raise SelectionError(f"paser clusters with N x N affinities: {x.n} rows is over its {MAX_ROWS:,}-row limit")
    deg = x.degradation
    n_clusters = min(x.options.num_clusters, x.n - 1)
    embedding = pool_embeddings(x, x.options.embeddings)  # the sentence encoder's when installed (kmq, mig alike)
    clusters = nmf_clusters(diffusion_embedding(embedding, n_clusters), n_clusters, seed)
    jsd = np.asarray(deg["jsd_sum"], dtype=np.float64)
    means = {int(c): float(jsd[clusters == c].mean()) for c in np.unique(clusters)}
    scores = row_scores(jsd, deg["n_tokens"], deg["output_chars"])
    rows = select_in_clusters(clusters, allocate(k, means), scores, [concepts(t) for t in x.texts["train"]])
    return np.asarray(rows, dtype=np.int64)


def _check(recipe) -> None:
    if recipe.prune is None:
        raise ValueError(
            "method 'paser' selects recovery data for a pruned model: add a `prune` section to the recipe "
            "(e.g. prune: {method: wanda, sparsity: 0.5})"
        )
