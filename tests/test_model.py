"""Model loading from a local Hugging Face folder; LoRA on selected layers."""

import torch

from bidsml.config import LoraConfig, ModelConfig
from bidsml.model import add_lora, load_base_model, load_tokenizer, model_fingerprint
from tests.conftest import TINY


def test_load_from_local_folder_matches_saved_weights(tmp_path, tokenizer):
    tiny = load_base_model(TINY, seed=3)
    tiny.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    cfg = ModelConfig(path=str(tmp_path), gguf_package=None, max_seq_length=64)
    loaded = load_base_model(cfg)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, tiny(input_ids=ids).logits)
    assert load_tokenizer(cfg).pad_token_id == tokenizer.pad_token_id  # no new token, no resize
    assert str(tmp_path) in model_fingerprint(cfg)


def test_lora_on_selected_layers_only():
    model = add_lora(load_base_model(TINY), LoraConfig(r=2, alpha=4, layers=(1,)), seed=0)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(".layers.1." in n for n in names)
