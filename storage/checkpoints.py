"""Warmup and fine-tune artifacts: LoRA checkpoints (peft folders + Adam state) and their index."""

from __future__ import annotations

import json
from pathlib import Path

from storage.names import ADAPTER_DIR, CHECKPOINTS_FILE
from storage.refs import ArtifactRef


def save_checkpoints(work: Path, ckpts: list[dict]) -> None:
    """Writes the index of warmup checkpoints (epoch, step, mean_lr, weight, optimizer, path)."""
    (Path(work) / CHECKPOINTS_FILE).write_text(json.dumps(ckpts, indent=1, sort_keys=True))


def load_checkpoints(ref: ArtifactRef) -> list[dict]:
    """Returns the warmup checkpoints (epoch, step, mean_lr, weight, optimizer, path) in epoch order."""
    return json.loads((ref.path / CHECKPOINTS_FILE).read_text())


def checkpoints_exist(root: Path) -> bool:
    return (Path(root) / CHECKPOINTS_FILE).exists()


def adapter_path(root: Path) -> Path:
    """Returns the peft folder of a fine-tune artifact."""
    return Path(root) / ADAPTER_DIR
