"""Influence matrix (LESS step 3): checkpoint-weighted cosine of gradient features.

A[i, j] = sum_c w_c * cos(G_c(z_i), g_c(v_j)). Features are stored already
L2-normalised, so cosine is a dot product; the product streams over row
blocks of the training features and never holds them all in memory. Each
block is a float32 matrix product (cosines are in [-1, 1] and k-term sums of
fp16-rounded products, so fp32 loses nothing that fp16 storage kept); the
fp64 work is in the column statistics of normalisation (bidsml.selection).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np


def influence_block(train_blocks: list[np.ndarray], val_features: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """Returns the (B, M) float32 influence of one block of pool rows.

    Args:
        train_blocks: per checkpoint, the block's normalised train features (B, k).
        val_features: per checkpoint, normalised validation features (M, k).
        weights: per-checkpoint weights w_c (sum to 1).
    """
    out = np.zeros((train_blocks[0].shape[0], val_features[0].shape[0]), dtype=np.float32)
    for w, T, V in zip(weights, train_blocks, val_features):
        out += np.float32(w) * (T.astype(np.float32) @ V.astype(np.float32).T)
    return out


def influence_matrix(
    train_chunks: Callable[[int], Iterable[tuple[int, np.ndarray]]],
    val_features: list[np.ndarray],
    weights: list[float],
    n_train: int,
) -> np.ndarray:
    """Returns A (n_train x M) float32.

    Args:
        train_chunks: for checkpoint c, yields (row offset, normalised train features chunk (n, k)).
        val_features: per checkpoint, normalised validation features (M, k).
        weights: per-checkpoint weights w_c (sum to 1).
        n_train: number of training rows.
    """
    M = val_features[0].shape[0]
    A = np.zeros((n_train, M), dtype=np.float64)
    for c, (w, V) in enumerate(zip(weights, val_features)):
        V = V.astype(np.float32)
        for start, chunk in train_chunks(c):
            A[start : start + len(chunk)] += w * (chunk.astype(np.float32) @ V.T)
    return A.astype(np.float32)
