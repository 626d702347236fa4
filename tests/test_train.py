"""Warmup training: self-describing checkpoints, Adam state by name, LR weights, resume."""

import json

import torch

from bidsml.config import TrainConfig
from bidsml.data import tokenize_all
from bidsml.train import OPTIMIZER_FILE, checkpoint_weights, linear_schedule, train_lora
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
    ckpts = train_lora(TINY, TINY_LORA, cfg, items, tmp_path / "a", seed=0, progress=False)
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
    resumed = train_lora(TINY, TINY_LORA, cfg, items, tmp_path / "b", seed=0, progress=False)
    assert json.dumps(resumed) == json.dumps(ckpts)
    from safetensors.torch import load_file

    wa = load_file(tmp_path / "a" / "epoch_2" / "adapter_model.safetensors")
    wb = load_file(tmp_path / "b" / "epoch_2" / "adapter_model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0)
