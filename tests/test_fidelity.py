"""Influence fidelity: the exact unprojected influence and the Spearman of projected vs exact."""

import numpy as np
import pytest
import torch

from bidsml.data.examples import tokenize_all
from bidsml.gradients.features import AdamTransform, CheckpointState, compute_features, lora_linears, reference_flat_grads
from bidsml.gradients.fidelity import exact_influence, fidelity_table, fidelity_warnings, spearman
from bidsml.gradients.projection import make_projector
from tests.conftest import adam_states, make_examples, make_lora_model


@pytest.fixture(scope="module")
def lora_model():
    return make_lora_model()


def _states(model, seed=3):
    return adam_states(model, seed)


def _flat(grads: dict, transform=None) -> torch.Tensor:
    return torch.cat([(transform(n, g[None])[0] if transform else g).flatten() for n, g in sorted(grads.items())])


def test_exact_influence_is_the_cosine_of_full_gradients(lora_model, tokenizer):
    """Adam-transformed train gradients vs plain validation gradients, by batch-size-1 autograd, weighted."""
    items, _ = tokenize_all(tokenizer, make_examples(7), 64)
    train, val = items[:5], items[5:]
    transform = AdamTransform(_states(lora_model))
    ckpts = [CheckpointState(None, transform), CheckpointState(None, transform)]
    got = exact_influence(lora_model, train, val, ckpts, [0.25, 0.75], tokenizer.pad_token_id, 4096, block_rows=2)
    T = torch.stack([_flat(reference_flat_grads(lora_model, t, tokenizer.pad_token_id), transform) for t in train])
    V = torch.stack([_flat(reference_flat_grads(lora_model, v, tokenizer.pad_token_id)) for v in val])
    ref = torch.nn.functional.normalize(T.double(), dim=1) @ torch.nn.functional.normalize(V.double(), dim=1).T
    np.testing.assert_allclose(got, ref.numpy(), atol=1e-5)  # weights sum to 1, same checkpoint twice


def test_large_sketch_ranks_like_the_exact_influence_and_a_small_one_does_not(lora_model, tokenizer):
    items, _ = tokenize_all(tokenizer, make_examples(40), 64)
    train, val = items[:36], items[36:]
    transform = AdamTransform(_states(lora_model))
    exact = exact_influence(
        lora_model, train, val, [CheckpointState(None, transform)], [1.0], tokenizer.pad_token_id, 4096
    )
    shapes = {n: tuple(m.weight.shape) for n, m in lora_linears(lora_model)}

    def projected(k):
        proj = make_projector("sjlt", k, 0, shapes)
        t, _ = compute_features(lora_model, train, proj, tokenizer.pad_token_id, transform, 4096)
        v, _ = compute_features(lora_model, val, proj, tokenizer.pad_token_id, None, 4096)
        return (t @ v.T).double().numpy()

    tasks = ["a", "a", "b", "b"]
    big = fidelity_table(projected(65536), exact, tasks)
    small = fidelity_table(projected(4), exact, tasks)
    assert [r["task"] for r in big] == ["a", "b", "all"]
    assert all(r["spearman"] > 0.97 for r in big)
    assert min(r["spearman"] for r in small) < 0.9
    assert fidelity_warnings(big, 65536) == []
    (warn, *_) = fidelity_warnings(small, 4)
    assert "k=4" in warn and "features.proj_dim" in warn


def test_spearman_is_rank_based():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    assert spearman(a, a**3) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert np.isnan(spearman(a, np.ones(4)))
