"""Run records: what one pipeline run used and produced, for `bidsflow runs` and `bidsflow step`.

A record's `refs` map each step (the kind of artifact it builds) to its
artifacts by label: `{"data": {"main": ref}, "selection": {"bids@0.1": ref},
"evaluation": {"base": ref, "bids@0.1": ref}}`. Records written by earlier
versions (plural keys, single refs unlabelled) read as that shape.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bidsml.errors import ArtifactError
from storage.names import RUNS_DIR
from storage.refs import ArtifactRef

MAIN = "main"  # the label of a step's artifact when a run has one of that kind
_OLD_KEYS = {"selections": "selection", "finetunes": "finetune", "evaluations": "evaluation"}


def save_run_record(
    run_root: Path, run_id: str, recipe: dict, refs: dict[str, dict[str, ArtifactRef]], extra: dict | None = None
) -> Path:
    """Writes run_root/run-records/<run_id>.json ({kind: {label: ref}}); returns its path."""
    folder = Path(run_root) / RUNS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    dumped = {kind: {label: ref.model_dump() for label, ref in by.items()} for kind, by in refs.items()}
    path = folder / f"{run_id}.json"
    path.write_text(
        json.dumps({"run_id": run_id, "recipe": recipe, "refs": dumped, **(extra or {})}, indent=1, default=str)
    )
    return path


def _normalized(record: dict) -> dict:
    """Returns the record with `refs` as {kind: {label: ref dict}} (also for records of earlier versions)."""
    refs: dict[str, Any] = {}
    for key, value in record.get("refs", {}).items():
        kind = _OLD_KEYS.get(key, key)
        refs[kind] = {MAIN: value} if isinstance(value, dict) and "digest" in value else value
    return {**record, "refs": refs}


def list_runs(run_root: Path) -> list[dict]:
    """Returns every run record under run_root, oldest first."""
    folder = Path(run_root) / RUNS_DIR
    recs = [_normalized(json.loads(p.read_text())) for p in folder.glob("*.json")] if folder.exists() else []
    return sorted(recs, key=lambda r: r.get("finished_at", ""))


def load_run(run_root: Path, run_id: str) -> dict:
    """Returns one run record ('latest' for the newest)."""
    runs = list_runs(run_root)
    if not runs:
        raise FileNotFoundError(f"no run records under {Path(run_root) / RUNS_DIR}; run `bidsflow run` first")
    if run_id == "latest":
        return runs[-1]
    for r in runs:
        if r["run_id"].startswith(run_id):
            return r
    raise FileNotFoundError(f"no run {run_id!r} under {Path(run_root) / RUNS_DIR}")


def run_ref(record: dict, kind: str, label: str | None = None) -> ArtifactRef:
    """Returns the run's `kind` artifact labelled `label` (None: its only or first one); raises naming what it has."""
    refs = record["refs"]
    if kind not in refs:
        raise ArtifactError(f"run {record['run_id']} has no {kind} artifact; it has {sorted(refs)}")
    found = refs[kind]
    if label is None:
        label = MAIN if MAIN in found else next(iter(found))
    if label not in found:
        raise ArtifactError(f"run {record['run_id']} has no {kind} {label!r}; it has {sorted(found)}")
    return ArtifactRef.model_validate(found[label])
