"""The selection artifact: the ranked table (Parquet), the subset as JSONL and a summary."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, ConfigDict

from bidsml.data.examples import Example, read_jsonl, write_jsonl
from bidsml.selection import selection_label
from storage.names import SELECTION_PARQUET, SELECTION_SUMMARY, SUBSET_JSONL
from storage.refs import ArtifactRef, check_ref, file_sha256


class SelectedBy(BaseModel):
    """What a selection, and each fine-tune and evaluation of it, carries in its summary: the method and budget.

    Shared across layers (run names, labels of fine-tunes and evaluations, reports): read it with
    `selected_by(ref)`, not from the summary dict.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)
    method: str
    budget: float

    @property
    def label(self) -> str:
        return selection_label(self.method, self.budget)


def selected_by(ref: ArtifactRef | dict | None) -> SelectedBy | None:
    """Returns the method and budget of a selection, fine-tune or adapter evaluation ref (None: not from one)."""
    if ref is None:
        return None
    meta = ref.get("meta") if isinstance(ref, dict) else ref.meta
    if not meta or meta.get("method") is None:
        return None
    return SelectedBy.model_validate(meta)


def subset_path(root: Path) -> Path:
    return Path(root) / SUBSET_JSONL


def save_selection(work: Path, table: pd.DataFrame, subset: list[Example], summary: dict) -> None:
    table.to_parquet(Path(work) / SELECTION_PARQUET, index=False)
    write_jsonl(subset, subset_path(work))
    (Path(work) / SELECTION_SUMMARY).write_text(json.dumps(summary, indent=1, sort_keys=True))


def subset_digest(ref: ArtifactRef) -> str:
    """Returns the sha256 of a selection's subset (after checking the selection is intact)."""
    check_ref(ref)
    return file_sha256(subset_path(ref.path))


def load_subset(ref: ArtifactRef) -> list[Example]:
    exs, _ = read_jsonl(subset_path(ref.path))
    return exs


def load_selection_table(ref: ArtifactRef) -> pd.DataFrame:
    return pd.read_parquet(ref.path / SELECTION_PARQUET)


def selection_exists(root: Path) -> bool:
    return (Path(root) / SELECTION_PARQUET).exists() and subset_path(root).exists()
