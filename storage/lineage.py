"""Lineage catalog: which step, run, parameters and inputs produced each artifact.

One JSON record per artifact digest under ``run_root/lineage/``, queryable
with DuckDB (``read_json``) or the CLI. The open-source Prefect server keeps
no lineage graph, so this is the place users look.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from filelock import FileLock

from storage.names import LINEAGE_DIR
from storage.refs import ArtifactRef


def record_artifact(
    run_root: Path,
    ref: ArtifactRef,
    step: str,
    run_id: str | None,
    params: dict[str, Any],
    inputs: list[ArtifactRef],
    root_run_id: str | None = None,
    label: str | None = None,
) -> Path:
    """Writes (or extends) the lineage record of `ref`; returns its path.

    `run_id` is the step's flow run, `root_run_id` the pipeline / select run
    that launched it; a cached rerun adds nothing (the task body does not run).
    `label`: which of a run's artifacts of its kind it is (`bids@0.1`, `base`).
    """
    folder = Path(run_root) / LINEAGE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ref.identity[:24]}.json"  # identity, not digest: equal content may come from other inputs
    with FileLock(str(path) + ".lock"):  # two runs recording the same artifact at once
        return _extend_record(path, ref, step, run_id, params, inputs, root_run_id, label)


def _extend_record(path, ref, step, run_id, params, inputs, root_run_id, label) -> Path:
    rec = (
        json.loads(path.read_text())
        if path.exists()
        else {
            "digest": ref.digest,
            "kind": ref.kind,
            "uri": ref.uri,
            "step": step,
            "label": label or "",
            "identity": ref.identity,
            "params": params,
            "inputs": [{"kind": i.kind, "identity": i.identity, "digest": i.digest, "uri": i.uri} for i in inputs],
            # earlier artifacts whose rows it copied (a grown pool's features and influence)
            "rows_from": reused_from(ref),
            "runs": [],
        }
    )
    if run_id and run_id not in [r["run_id"] for r in rec["runs"]]:
        rec["runs"].append({"run_id": run_id, "root_run_id": root_run_id, "at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    path.write_text(json.dumps(rec, indent=1, default=str))
    return path


def reused_from(ref: ArtifactRef) -> list[str]:
    """Returns the identities of the earlier artifacts an artifact copied rows from (its summary says so)."""
    src = ref.meta.get("reused_from")
    if isinstance(src, dict):
        return list(src.get("sources", []))
    return [src] if isinstance(src, str) else []


def find_record(run_root: Path, key: str) -> dict | None:
    """Returns the lineage record whose identity or digest starts with `key`, or whose folder is `key`."""
    for p in sorted((Path(run_root) / LINEAGE_DIR).glob("*.json")):
        rec = json.loads(p.read_text())
        if rec["identity"].startswith(key) or rec["digest"].startswith(key) or rec["uri"].rstrip("/").endswith(key):
            return rec
    return None


def upstream(run_root: Path, key: str) -> list[dict]:
    """Returns the records of an artifact and everything upstream of it, nearest first."""
    out, todo, seen = [], [key], set()
    while todo:
        rec = find_record(run_root, todo.pop(0))
        if rec is None or rec["identity"] in seen:
            continue
        seen.add(rec["identity"])
        out.append(rec)
        todo.extend(i["identity"] for i in rec["inputs"])
        todo.extend(rec.get("rows_from", []))
    return out


def run_lineage(run_root: Path, refs: list[ArtifactRef]) -> list[dict]:
    """Returns the records upstream of all of a run's artifacts (each once), nearest first."""
    out, seen = [], set()
    for ref in refs:
        for rec in upstream(run_root, ref.identity):
            if rec["identity"] not in seen:
                seen.add(rec["identity"])
                out.append(rec)
    return out


def _label(rec: dict) -> str:
    p = rec.get("params") or {}
    extra = f" {rec['label']}" if rec.get("label") else ""
    if not extra and "method" in p:  # records written before labels were recorded
        extra = f" {p['method']}@{p.get('budget')}"
    elif not extra and rec["kind"] == "evaluation":
        extra = f" {p.get('model', '')}"
    return f"{rec['step']}{extra}<br/>{rec['kind']} {rec['digest'][:10]}"


def mermaid(records: list[dict]) -> str:
    """Returns a mermaid flowchart (inputs -> outputs) of lineage records."""
    lines = ["flowchart LR"]
    known = {r["identity"] for r in records}
    for r in records:
        lines.append(f'  n{r["identity"][:12]}["{_label(r)}"]')
    for r in records:
        for i in r["inputs"]:
            if i["identity"] in known:
                lines.append(f"  n{i['identity'][:12]} --> n{r['identity'][:12]}")
        for src in r.get("rows_from", []):
            if src in known:
                lines.append(f"  n{src[:12]} -. rows copied .-> n{r['identity'][:12]}")
    return "\n".join(lines)
