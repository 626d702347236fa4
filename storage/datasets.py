"""The data artifact: the pool and validation examples (JSONL, message format) and the loading report."""

from __future__ import annotations

import json
from pathlib import Path

from bidsml.data.examples import Example, read_jsonl, write_jsonl
from storage.names import DATA_REPORT, POOL_FILE, VAL_FILE
from storage.refs import ArtifactRef

SPLIT_FILES = {"train": POOL_FILE, "val": VAL_FILE}


def split_path(root: Path, split: str) -> Path:
    """Returns the JSONL file of a split ('train': the pool, 'val': validation examples)."""
    return Path(root) / SPLIT_FILES[split]


def save_data(work: Path, pool: list[Example], val: list[Example], report: dict) -> None:
    write_jsonl(pool, split_path(work, "train"))
    write_jsonl(val, split_path(work, "val"))
    (Path(work) / DATA_REPORT).write_text(json.dumps(report, indent=1, sort_keys=True))


def load_split(ref: ArtifactRef, split: str) -> list[Example]:
    """Returns the examples of one split ('train' / 'val') of a data artifact."""
    exs, _ = read_jsonl(split_path(ref.path, split))
    return exs


def data_exists(root: Path) -> bool:
    return all(split_path(root, s).exists() for s in SPLIT_FILES)
