"""Per-example gradient features against plain batch-size-1 autograd."""

import pytest
import torch

from bidsml.data.examples import tokenize_all
from bidsml.errors import FeatureError
from bidsml.gradients.features import AdamTransform, compute_features, lora_linears, reference_flat_grads
from bidsml.gradients.projection import make_projector
from tests.conftest import adam_states, make_examples, make_lora_model


@pytest.fixture(scope="module")
def lora_model():
    return make_lora_model()


def _states(model, seed=2):
    return adam_states(model, seed)


def _identity_projector(model):
    shapes = {n: tuple(m.weight.shape) for n, m in lora_linears(model)}
    return make_projector("rademacher", 16, 0, shapes), shapes


def test_features_equal_batch_size_one_autograd_with_adam(lora_model, tokenizer):
    items, _ = tokenize_all(tokenizer, make_examples(6), 64)
    transform = AdamTransform(_states(lora_model))
    shapes = {n: tuple(m.weight.shape) for n, m in lora_linears(lora_model)}
    D = sum(torch.Size(s).numel() for s in shapes.values())
    # Project with the identity: a "projector" whose dense matrix is I (k = D)
    proj = make_projector("sjlt", D, 0, shapes)
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
    proj = make_projector("sjlt", 11, 5, shapes)
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
    assert torch.equal(make_projector("sjlt", 11, 5, shapes).project(g), proj.project(g))
    assert not torch.equal(make_projector("sjlt", 11, 6, shapes).project(g), proj.project(g))


def test_missing_optimizer_state_names_the_parameter(lora_model, tokenizer):
    items, _ = tokenize_all(tokenizer, make_examples(2), 64)
    states = _states(lora_model)
    missing = sorted(states)[3]
    del states[missing]
    proj, _ = _identity_projector(lora_model)
    with pytest.raises(FeatureError, match=missing.replace(".", r"\.")):
        compute_features(lora_model, items, proj, tokenizer.pad_token_id, AdamTransform(states), max_tokens=1000)


def test_empty_label_mask_and_nan_gradients_name_the_example(lora_model, tokenizer):
    from bidsml.data.examples import Tokenized

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


def test_all_checkpoints_in_one_pass_equal_one_checkpoint_at_a_time(lora_model, tokenizer):
    from bidsml.gradients.features import CheckpointState, compute_features_checkpoints

    items, _ = tokenize_all(tokenizer, make_examples(7, seed=5), 64)
    proj, _ = _identity_projector(lora_model)
    params = dict(lora_linears(lora_model))
    original = {n: m.weight.detach().clone() for n, m in params.items()}
    g = torch.Generator().manual_seed(7)
    other = {n: w + 0.05 * torch.randn(w.shape, generator=g) for n, w in original.items()}
    ckpts = [
        CheckpointState(original, AdamTransform(_states(lora_model, seed=2))),
        CheckpointState(other, AdamTransform(_states(lora_model, seed=3))),
    ]
    try:
        together = compute_features_checkpoints(lora_model, items, proj, tokenizer.pad_token_id, ckpts, 10_000)
        for ck, (f, n) in zip(ckpts, together):
            with torch.no_grad():
                for name, mod in params.items():
                    mod.weight.copy_(ck.weights[name])
            alone, n_alone = compute_features(lora_model, items, proj, tokenizer.pad_token_id, ck.transform, 10_000)
            assert torch.equal(f, alone) and torch.equal(n, n_alone)
        assert not torch.allclose(together[0][0], together[1][0], atol=1e-3)  # the checkpoints really differ
    finally:
        with torch.no_grad():
            for name, mod in params.items():
                mod.weight.copy_(original[name])
    missing = dict(other)
    del missing[sorted(missing)[1]]
    with pytest.raises(FeatureError, match=r"checkpoint has no weights for LoRA parameter '.*lora_B"):
        compute_features_checkpoints(
            lora_model, items, proj, tokenizer.pad_token_id, [CheckpointState(missing, None)], 10_000
        )


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_autocast_features_stay_close_to_fp32(lora_model, tokenizer, precision):
    from bidsml.gradients.features import resolve_precision

    items, _ = tokenize_all(tokenizer, make_examples(5, seed=9), 64)
    shapes = {n: tuple(m.weight.shape) for n, m in lora_linears(lora_model)}
    proj = make_projector("sjlt", 512, 0, shapes)
    tf = AdamTransform(_states(lora_model))
    ref, ref_n = compute_features(lora_model, items, proj, tokenizer.pad_token_id, tf, 10_000, "float32")
    low, low_n = compute_features(lora_model, items, proj, tokenizer.pad_token_id, tf, 10_000, precision)
    assert low.dtype == torch.float32  # accumulation and storage stay fp32
    cos = (ref * low).sum(1)
    assert cos.min() > 0.99, cos
    assert not torch.equal(ref, low)  # autocast really ran in low precision
    assert resolve_precision("auto", torch.device("cpu")) == "float32"
    assert resolve_precision("float16", torch.device("cpu")) == "float16"
