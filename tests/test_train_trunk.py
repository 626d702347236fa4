"""Training and featurization from the frozen trunk equal the full path (tiny model, LoRA on layer 1 of 2)."""

import numpy as np
import pytest
import torch

from bidsml.config import LoraConfig, TrainConfig
from bidsml.data.examples import tokenize_all
from bidsml.gradients.features import AdamTransform, CheckpointState, compute_features_checkpoints, lora_linears
from bidsml.model import load_base_model
from bidsml.gradients.projection import make_projector
from bidsml.training.lora import TrainSettings, TrunkRows, add_lora, train_lora
from tasks.adapters import pool_trunk
from tests.conftest import TINY, make_examples

TOP = LoraConfig(r=4, alpha=8, dropout=0.1, layers=(1,))
TRAIN = TrainConfig(epochs=2, lr=1e-3, batch_size=3)


@pytest.fixture(scope="module")
def pool(tokenizer):
    items, _ = tokenize_all(tokenizer, make_examples(12), 64)
    return items


def _adapter(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def test_training_from_the_trunk_equals_full_passes(pool, tokenizer, tmp_path):
    """Same losses step by step (dropout included) and the same adapter, to 1e-5; the trunk is saved and reused."""
    rows = [7, 2, 9, 4, 0, 11, 5]
    subset = [pool[i] for i in rows]
    trunk = pool_trunk(TINY, TOP.layers, pool, tmp_path, tokenizer.pad_token_id, 512)
    assert trunk.layer == 1 and len(trunk) == len(pool)
    again = pool_trunk(TINY, TOP.layers, pool, tmp_path, tokenizer.pad_token_id, 512)  # from the file
    np.testing.assert_array_equal(np.asarray(again.states), np.asarray(trunk.states))
    losses = {"full": [], "trunk": []}
    warnings = []
    settings = TrainSettings(TINY, TOP, TRAIN, 0, save_every_epoch=False, progress_bar=False)
    full = train_lora(settings, subset, tmp_path / "full", on_step=lambda s, t, loss: losses["full"].append(loss))
    fast = train_lora(
        settings,
        subset,
        tmp_path / "trunk",
        trunk=TrunkRows(trunk, rows),
        on_step=lambda s, t, loss: losses["trunk"].append(loss),
        on_warning=warnings.append,
    )
    assert warnings == [] and len(losses["full"]) == 6
    np.testing.assert_allclose(losses["trunk"], losses["full"], atol=1e-5)
    a, b = _adapter(tmp_path / "full" / full[-1]["path"]), _adapter(tmp_path / "trunk" / fast[-1]["path"])
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k].numpy(), a[k].numpy(), atol=1e-5)


def test_a_trunk_that_disagrees_with_a_full_pass_is_dropped_with_a_warning(pool, tokenizer, tmp_path):
    trunk = pool_trunk(TINY, TOP.layers, pool, tmp_path, tokenizer.pad_token_id, 512)
    trunk.states = np.asarray(trunk.states) + 1.0  # not the base model's states
    warnings, losses = [], []
    train_lora(
        TrainSettings(TINY, TOP, TrainConfig(epochs=1, lr=1e-3, batch_size=3), 0, progress_bar=False),
        pool[:6],
        tmp_path / "t",
        trunk=TrunkRows(trunk, list(range(6))),
        on_warning=warnings.append,
        on_step=lambda s, t, loss: losses.append(loss),
    )
    (w,) = warnings
    assert "differs from a full pass" in w and "full passes" in w and len(losses) == 2


def test_features_from_the_trunk_equal_the_full_path(pool, tokenizer):
    """All checkpoints of a micro-batch share its trunk; features and norms equal the full path's."""
    model = add_lora(load_base_model(TINY), TOP, seed=0).eval()
    g = torch.Generator().manual_seed(0)
    params = dict(lora_linears(model))
    ckpts = []
    for c in range(3):
        weights = {n: torch.randn(m.weight.shape, generator=g) * 0.05 for n, m in params.items()}
        states = {
            n: {
                "exp_avg": torch.randn(m.weight.shape, generator=g) * 1e-3,
                "exp_avg_sq": torch.rand(m.weight.shape, generator=g) * 1e-6,
            }
            for n, m in params.items()
        }
        ckpts.append(CheckpointState(weights, AdamTransform(states)))
    proj = make_projector("sjlt", 256, 0, {n: tuple(m.weight.shape) for n, m in params.items()})
    full = compute_features_checkpoints(model, pool, proj, tokenizer.pad_token_id, ckpts, 200)
    fast = compute_features_checkpoints(model, pool, proj, tokenizer.pad_token_id, ckpts, 200, trunk_layer=1)
    for (f1, n1), (f2, n2) in zip(full, fast):
        np.testing.assert_allclose(f2.numpy(), f1.numpy(), atol=1e-5)
        np.testing.assert_allclose(n2.numpy(), n1.numpy(), rtol=1e-5)


def test_a_trunk_over_the_memory_budget_is_written_and_read_memory_mapped(pool, tokenizer, tmp_path, monkeypatch):
    import bidsml.training.trunk as core
    import storage.train_trunk as store

    held = pool_trunk(TINY, TOP.layers, pool, tmp_path / "held", tokenizer.pad_token_id, 512)
    monkeypatch.setattr(core, "MEMMAP_BYTES", 0)  # every trunk is "too large" to hold
    monkeypatch.setattr(store, "MEMORY_BUDGET_BYTES", 0)
    mapped = pool_trunk(TINY, TOP.layers, pool, tmp_path / "mapped", tokenizer.pad_token_id, 512)
    assert isinstance(mapped.states, np.memmap) and not isinstance(held.states, np.memmap)
    np.testing.assert_array_equal(np.asarray(mapped.states), np.asarray(held.states))
    assert not list((tmp_path / "mapped" / "trunk").glob("building-*"))  # the file being written was renamed
    rows = [3, 1, 4]
    np.testing.assert_array_equal(mapped.batch(rows, "cpu", torch.float32), held.batch(rows, "cpu", torch.float32))
