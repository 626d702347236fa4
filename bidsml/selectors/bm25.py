"""BM25: the lexical control (does influence find more than shared words and templates?).

Each pool row's text (its messages' contents, joined) is a document and each
validation example's text a query; the score matrix S[i, j] is the BM25
score of row i for query j (the `bm25s` package: Lucene's BM25, k1 = 1.5,
b = 0.75, English stopwords removed, lower-cased word tokens). S then goes
through exactly what BIDS does with the influence matrix: every column
z-scored over the pool (a constant column, a query sharing no word with
any row, is dropped), then the balancing iteration, so the only difference
between `bm25` and `bids` is what scores a row against a validation
example: shared words or gradient alignment.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from bidsml.errors import SelectionError
from bidsml.selection import bids_iterate, normalize_columns
from bidsml.selectors.registry import SelectorInputs, register_selector


class BM25Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    k1: float = Field(1.5, gt=0, description="Term-frequency saturation.")
    b: float = Field(0.75, ge=0, le=1, description="Document-length normalisation.")
    stopwords: str | None = Field("en", description="bm25s stopword list ('en'), or null to keep every word.")


def bm25_scores(docs: list[str], queries: list[str], opts: BM25Options = BM25Options()) -> np.ndarray:
    """Returns S (len(docs) x len(queries), float32): each document's BM25 score for each query."""
    import bm25s

    S = np.zeros((len(docs), len(queries)), dtype=np.float32)
    corpus = bm25s.tokenize(docs, stopwords=opts.stopwords, show_progress=False)
    if not corpus.vocab:  # no document has a word: every score is 0
        return S
    retriever = bm25s.BM25(k1=opts.k1, b=opts.b, method="lucene")
    retriever.index(corpus, show_progress=False)
    tokens = bm25s.tokenize(queries, stopwords=opts.stopwords, return_ids=False, show_progress=False)
    for j, query in enumerate(tokens):
        if query:
            S[:, j] = retriever.get_scores(query)
    return S


@register_selector("bm25", needs=("text",), options=BM25Options)
def select_bm25(x: SelectorInputs, k: int, seed: int) -> np.ndarray:
    """BM25 of pool rows against each validation example, z-scored per column and balanced as BIDS balances."""
    S = bm25_scores(x.texts["train"], x.texts["val"], x.options)
    Z, kept = normalize_columns(S, overwrite=True)
    if len(kept) == 0:
        raise SelectionError("bm25: no validation example shares a word with the pool; nothing to rank by")
    return bids_iterate(Z, k)
