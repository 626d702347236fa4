"""Model artifacts (the prune step's pruned model): a Hugging Face model folder inside the artifact."""

from __future__ import annotations

from pathlib import Path

from storage.names import MODEL_DIR
from storage.refs import ArtifactRef


def model_folder(root: Path) -> Path:
    """Returns the model folder of a prune artifact (config.json, model.safetensors, tokenizer files)."""
    return Path(root) / MODEL_DIR


def pruned_model_config(model_cfg, ref: ArtifactRef):
    """Returns the recipe's model section pointing at a prune artifact's folder (loaded like any local model)."""
    return model_cfg.model_copy(
        update={"path": str(model_folder(ref.path)), "gguf": None, "gguf_package": None, "tiny": False}
    )
