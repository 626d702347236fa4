"""Where a model comes from: one resolver per kind, registered by the recipe key that names it.

Every resolver returns a local Hugging Face folder (config.json, safetensors
weights, tokenizer). Kinds (the `model.*` recipe keys):

- `path`: a local Hugging Face folder, used as it is;
- `gguf`: a `.gguf` file, converted once to safetensors;
- `gguf_package`: an installed Python package that ships a `.gguf`, or that
  assembles one from chunk packages (an `assemble(output_path)` function, or
  `*.gguf.partNN` files in the package and the packages it requires).

transformers refuses `save_pretrained` on a GGUF-loaded model, so a GGUF is
loaded, its config stripped of `quantization_config`, rebuilt `from_config`
with the dequantised state dict, and saved once. Converted folders are keyed
by the GGUF's content hash: the same file from two places converts once.
To add a kind: register a function here and add its key to `ModelConfig`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from bidsml.errors import ArtifactError
from bidsml.filehash import file_digest_cached

# Where converted models and file digests live unless BIDSFLOW_CACHE says otherwise.
DEFAULT_CACHE = Path(os.environ.get("BIDSFLOW_CACHE", Path.home() / ".cache" / "bidsflow"))

ModelSource = Callable[[str, Path], Path]  # (recipe value, cache folder) -> HF folder
MODEL_SOURCES: dict[str, ModelSource] = {}


def register_model_source(key: str):
    """Registers a resolver for the recipe key `model.<key>`; a key registered twice is refused."""

    def deco(fn: ModelSource) -> ModelSource:
        if key in MODEL_SOURCES:
            raise ValueError(f"model source {key!r} registered twice")
        MODEL_SOURCES[key] = fn
        return fn

    return deco


def digest_cache(cache: Path) -> Path:
    return Path(cache) / "file-digests.json"


@register_model_source("path")
def hf_folder(value: str, cache: Path) -> Path:
    path = Path(value).expanduser()
    if not (path / "config.json").exists():
        raise ArtifactError(f"model.path: {path} is not a Hugging Face model folder (no config.json)")
    return path


@register_model_source("gguf")
def gguf_file(value: str, cache: Path) -> Path:
    path = Path(value).expanduser()
    if not path.is_file() or path.suffix != ".gguf":
        raise ArtifactError(f"model.gguf: {path} is not a .gguf file")
    return convert_gguf(path, cache)


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is None or spec.origin is None:
        raise ArtifactError(
            f"model.gguf_package: package {package!r} is not installed; install it with `pip install {package}`"
            " (and its chunk packages, if it has any)"
        )
    return Path(spec.origin).parent


def _required_packages(package: str) -> list[str]:
    try:
        reqs = importlib.metadata.requires(package) or []
    except importlib.metadata.PackageNotFoundError:
        return []
    return [re.split(r"[ ;<>=!~\[]", r, maxsplit=1)[0] for r in reqs]


def packaged_gguf(package: str, cache: Path) -> Path:
    """Returns the .gguf file of an installed package: shipped, or assembled once from its chunk packages."""
    folder = _package_dir(package)
    shipped = sorted(folder.rglob("*.gguf"))
    if shipped:
        return shipped[0]
    out_dir = Path(cache) / "gguf" / package
    mod = importlib.import_module(package.replace("-", "_"))
    if callable(getattr(mod, "assemble", None)):  # the package knows how to assemble itself (and verifies it)
        name = getattr(mod, "MODEL_NAME", f"{package}.gguf")
        return Path(mod.assemble(out_dir / name))
    parts = sorted(folder.rglob("*.gguf.part*"))
    for dep in _required_packages(package):
        if importlib.util.find_spec(dep.replace("-", "_")) is not None:
            parts += sorted(_package_dir(dep).rglob("*.gguf.part*"))
    if not parts:
        raise ArtifactError(
            f"model.gguf_package: package {package!r} ships no .gguf file, no assemble() and no *.gguf.part* chunks"
            f" (looked in {folder} and its required packages)"
        )
    parts = sorted(parts, key=lambda p: p.name)
    target = out_dir / parts[0].name.split(".part")[0]
    if target.exists():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    with tmp.open("wb") as out:
        for p in parts:
            with p.open("rb") as fh:
                shutil.copyfileobj(fh, out, 1 << 20)
    expected = getattr(mod, "EXPECTED_SHA256", None)
    if expected:
        with tmp.open("rb") as fh:
            got = hashlib.file_digest(fh, "sha256").hexdigest()
        if got != expected:
            tmp.unlink()
            raise ArtifactError(f"model.gguf_package: {package!r} chunks assemble to sha256 {got}, expected {expected}")
    os.replace(tmp, target)
    return target


@register_model_source("gguf_package")
def gguf_package(value: str, cache: Path) -> Path:
    return convert_gguf(packaged_gguf(value, cache), cache)


def convert_gguf(gguf: Path, cache: Path) -> Path:
    """Returns a safetensors folder for a .gguf file, converting it the first time (keyed by its content)."""
    digest = file_digest_cached(gguf, digest_cache(cache))
    out = Path(cache) / "models" / f"gguf-{digest[:16]}"  # by content: one conversion per distinct file
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
    (tmp / "bidsflow_source.json").write_text(json.dumps({"gguf": str(gguf), "sha256": digest}))
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():  # another process won the race
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, out)
    return out
