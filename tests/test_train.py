"""Warmup training: self-describing checkpoints, Adam state by name, LR weights, resume."""

import json

import torch

from bidsml.config import TrainConfig
from bidsml.data.examples import tokenize_all
from bidsml.training.lora import OPTIMIZER_FILE, TrainSettings, checkpoint_weights, linear_schedule, train_adapter, train_lora
from tests.conftest import TINY, TINY_LORA, make_examples


def test_checkpoint_weights_match_less_readme():
    lrs = [1.6877e-05, 1.2859e-05, 7.7030e-06, 2.5616e-06]
    w = checkpoint_weights(lrs)
    assert abs(sum(w) - 1) < 1e-12 and w[0] > w[1] > w[2] > w[3]


def test_linear_schedule_warms_up_then_decays():
    vals = [linear_schedule(s, 100, 0.1) for s in range(100)]
    assert vals[0] == 0.1 and vals[9] == 1.0 and vals[10] == 1.0 and vals[-1] < 0.02


def test_warmup_checkpoints_and_resume(tmp_path, tokenizer):
    items, _ = tokenize_all(tokenizer, make_examples(12), 64)
    cfg = TrainConfig(epochs=3, lr=1e-3, batch_size=4)
    settings = TrainSettings(TINY, TINY_LORA, cfg, seed=0, progress_bar=False)
    ckpts = train_lora(settings, items, tmp_path / "a")
    assert [c["epoch"] for c in ckpts] == [0, 1, 2] and [c["step"] for c in ckpts] == [3, 6, 9]
    assert ckpts[0]["mean_lr"] > ckpts[1]["mean_lr"] > ckpts[2]["mean_lr"] > 0
    states = torch.load(tmp_path / "a" / "epoch_0" / OPTIMIZER_FILE, weights_only=True)
    names = list(states)
    assert names and all("lora_" in n for n in names)
    assert set(states[names[0]]) == {"exp_avg", "exp_avg_sq"}
    # killed after epoch 1: drop the last checkpoint and resume
    import shutil

    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "epoch_2")
    resumed = train_lora(settings, items, tmp_path / "b")
    assert json.dumps(resumed) == json.dumps(ckpts)
    from safetensors.torch import load_file

    wa = load_file(tmp_path / "a" / "epoch_2" / "adapter_model.safetensors")
    wb = load_file(tmp_path / "b" / "epoch_2" / "adapter_model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0)


def test_train_adapter_keeps_the_final_adapter_only_and_equals_the_last_checkpoint(tmp_path, tokenizer):
    """A fine-tune's adapter: the last epoch's weights, bit for bit those of the same run with every epoch saved;
    the training folder is gone."""
    items, _ = tokenize_all(tokenizer, make_examples(12), 64)
    settings = TrainSettings(TINY, TINY_LORA, TrainConfig(epochs=2, lr=1e-3, batch_size=4), seed=3, progress_bar=False)
    every = train_lora(settings, items, tmp_path / "every")
    (tmp_path / "ft").mkdir()
    last = train_adapter(settings, items, tmp_path / "ft" / "adapter")
    assert last["epoch"] == 1 and last["step"] == every[-1]["step"] == 6
    assert sorted(p.name for p in (tmp_path / "ft").iterdir()) == ["adapter"]
    from safetensors.torch import load_file

    a = load_file(tmp_path / "every" / "epoch_1" / "adapter_model.safetensors")
    b = load_file(tmp_path / "ft" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
