"""Per-example gradient features against plain batch-size-1 autograd."""

import pytest
import torch

from bidsml.data import tokenize_all
from bidsml.errors import FeatureError
from bidsml.features import AdamTransform, compute_features, lora_linears, reference_flat_grads
from bidsml.model import add_lora, load_base_model
from bidsml.projection import Projector
from tests.conftest import TINY, TINY_LORA, make_examples


@pytest.fixture(scope="module")
def lora_model():
    model = add_lora(load_base_model(TINY, seed=0), TINY_LORA, seed=0)
    # LoRA B starts at zero; give it values so both A and B gradients are non-trivial
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)
    return model.eval()


def _states(model, seed=2):
    g = torch.Generator().manual_seed(seed)
    return {
        n: {
            "exp_avg": torch.randn(m.weight.shape, generator=g) * 1e-3,
            "exp_avg_sq": torch.rand(m.weight.shape, generator=g) * 1e-6,
        }
        for n, m in lora_linears(model)
    }


def _identity_projector(model):
    shapes = {n: tuple(m.weight.shape) for n, m in lora_linears(model)}
    return Projector("rademacher", 16, 0, shapes), shapes


def test_features_equal_batch_size_one_autograd_with_adam(lora_model, tokenizer):
    items, _ = tokenize_all(tokenizer, make_examples(6), 64)
    transform = AdamTransform(_states(lora_model))
    shapes = {n: tuple(m.weight.shape) for n, m in lora_linears(lora_model)}
    D = sum(torch.Size(s).numel() for s in shapes.values())
    # Project with the identity: a "projector" whose dense matrix is I (k = D)
    proj = Projector("sjlt", D, 0, shapes)
    for name in shapes:  # overwrite hashes with the identity map
        off = proj.offsets[name]
        n = torch.Size(shapes[name]).numel()
        proj._cache[(name, "cpu")] = (torch.arange(off, off + n), torch.ones(n))
    feats, norms = compute_features(lora_model, items, proj, tokenizer.pad_token_id, transform, max_tokens=10_000)
    for i, it in enumerate(items):
        ref = reference_flat_grads(lora_model, it, tokenizer.pad_token_id)
        flat = torch.cat([transform(n, ref[n][None]).flatten() for n in sorted(ref)])
        full = feats[i] * norms[i]
        rel = (full - flat).norm() / flat.norm()
        assert rel < 1e-5, f"example {i}: relative error {rel:.2e}"


def test_features_do_not_depend_on_batch_composition(lora_model, tokenizer):
    items, _ = tokenize_all(tokenizer, make_examples(8, seed=3), 64)
    proj, _ = _identity_projector(lora_model)
    together, n1 = compute_features(lora_model, items, proj, tokenizer.pad_token_id, None, max_tokens=10_000)
    alone, n2 = compute_features(lora_model, items, proj, tokenizer.pad_token_id, None, max_tokens=1)  # batch size 1
    assert torch.allclose(together, alone, atol=1e-5)
    assert torch.allclose(n1, n2, rtol=1e-4)


def test_sjlt_module_by_module_equals_whole_vector():
    shapes = {"a": (3, 5), "b": (7,), "c": (2, 2)}
    proj = Projector("sjlt", 11, 5, shapes)
    g = {n: torch.randn(4, torch.Size(s).numel()) for n, s in shapes.items()}
    whole = torch.cat([g[n] for n in sorted(g)], dim=1)
    # explicit sparse matrix from the hashes
    mat = torch.zeros(whole.shape[1], 11)
    for n in sorted(shapes):
        bucket, sign = proj._sjlt(n, torch.device("cpu"))
        for j in range(bucket.numel()):
            mat[proj.offsets[n] + j, bucket[j]] = sign[j]
    assert torch.allclose(proj.project(g), whole @ mat, atol=1e-6)
    # same seed, fresh object -> same features; other seed -> different
    assert torch.equal(Projector("sjlt", 11, 5, shapes).project(g), proj.project(g))
    assert not torch.equal(Projector("sjlt", 11, 6, shapes).project(g), proj.project(g))


def test_missing_optimizer_state_names_the_parameter(lora_model, tokenizer):
    items, _ = tokenize_all(tokenizer, make_examples(2), 64)
    states = _states(lora_model)
    missing = sorted(states)[3]
    del states[missing]
    proj, _ = _identity_projector(lora_model)
    with pytest.raises(FeatureError, match=missing.replace(".", r"\.")):
        compute_features(lora_model, items, proj, tokenizer.pad_token_id, AdamTransform(states), max_tokens=1000)


def test_empty_label_mask_and_nan_gradients_name_the_example(lora_model, tokenizer):
    from bidsml.data import Tokenized

    items, _ = tokenize_all(tokenizer, make_examples(3), 64)
    proj, _ = _identity_projector(lora_model)
    empty = Tokenized("toy/empty", items[0].input_ids, [-100] * len(items[0].input_ids), False)
    with pytest.raises(FeatureError, match="example 'toy/empty' has an empty label mask"):
        compute_features(lora_model, [items[1], empty], proj, tokenizer.pad_token_id, None, max_tokens=1000)
    name, mod = lora_linears(lora_model)[0]
    saved = mod.weight.data.clone()
    mod.weight.data[0, 0] = float("nan")
    try:
        with pytest.raises(FeatureError, match=r"non-finite loss for examples \['toy/"):
            compute_features(lora_model, items, proj, tokenizer.pad_token_id, None, max_tokens=1000)
    finally:
        mod.weight.data.copy_(saved)
