"""Influence matrix: the checkpoint-weighted cosine, streamed in chunks, equals the dense definition."""

import numpy as np
import pytest

from bidsml.influence.scores import influence_matrix


def _normalised(rng, n, k):
    x = rng.normal(size=(n, k)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_streamed_influence_equals_the_weighted_cosine(chunk):
    rng = np.random.default_rng(0)
    N, M, k, C = 50, 6, 16, 3
    train = [_normalised(rng, N, k) for _ in range(C)]
    val = [_normalised(rng, M, k) for _ in range(C)]
    w = [0.5, 0.3, 0.2]

    def chunks(c):
        for s in range(0, N, chunk):
            yield s, train[c][s : s + chunk]

    A = influence_matrix(chunks, val, w, N)
    ref = sum(wc * (train[c].astype(np.float64) @ val[c].T.astype(np.float64)) for c, wc in enumerate(w))
    assert A.shape == (N, M) and A.dtype == np.float32
    np.testing.assert_allclose(A, ref, atol=1e-6)
    # a cosine is bounded, and the weights sum to 1, so |A| <= 1
    assert np.abs(A).max() <= 1 + 1e-6


def test_fp16_stored_features_are_accumulated_in_fp32():
    rng = np.random.default_rng(1)
    t, v = _normalised(rng, 10, 8), _normalised(rng, 3, 8)
    A = influence_matrix(lambda c: [(0, t.astype(np.float16))], [v.astype(np.float16)], [1.0], 10)
    np.testing.assert_allclose(A, t @ v.T, atol=2e-3)
