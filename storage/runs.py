"""Run records: what one pipeline run used and produced, for `bidsflow runs` and `bidsflow step`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from storage.names import RUNS_DIR
from storage.refs import ArtifactRef


def save_run_record(run_root: Path, run_id: str, recipe: dict, refs: dict[str, Any], extra: dict | None = None) -> Path:
    """Writes run_root/run-records/<run_id>.json; returns its path."""
    folder = Path(run_root) / RUNS_DIR
    folder.mkdir(parents=True, exist_ok=True)

    def dump(v):
        if isinstance(v, ArtifactRef):
            return v.model_dump()
        if isinstance(v, dict):
            return {k: dump(x) for k, x in v.items()}
        return v

    path = folder / f"{run_id}.json"
    path.write_text(
        json.dumps({"run_id": run_id, "recipe": recipe, "refs": dump(refs), **(extra or {})}, indent=1, default=str)
    )
    return path


def list_runs(run_root: Path) -> list[dict]:
    """Returns every run record under run_root, oldest first."""
    folder = Path(run_root) / RUNS_DIR
    recs = [json.loads(p.read_text()) for p in folder.glob("*.json")] if folder.exists() else []
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
