"""Artifact references, content digests and atomic publication.

An artifact is a folder under ``run_root/artifacts/<kind>/<identity>/``.
Its identity is a hash of what produced it (input digests, the recipe values
the step reads, the step's code version); its digest is a hash of what it
contains (the manifest of file hashes). Artifacts are built in
``<identity>.partial/`` (resumable) and published by an atomic rename, after
which they are never modified.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock
from pydantic import BaseModel, ConfigDict

from bidsml.errors import ArtifactError
from storage.names import ARTIFACTS_DIR, BUILD_INFO, BUILDS_LOG, LOCK_SUFFIX, MANIFEST, META, PARTIAL_SUFFIX


class ArtifactRef(BaseModel):
    """A small, JSON-serialisable pointer to a published artifact."""

    model_config = ConfigDict(frozen=True)
    kind: str
    identity: str
    uri: str
    digest: str
    meta: dict[str, Any] = {}

    @property
    def path(self) -> Path:
        return Path(self.uri)


def stable_hash(obj: Any) -> str:
    """Returns the sha256 of a JSON-serialisable object (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    with Path(path).open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def duckdb_content_sha256(path: Path) -> str:
    """Returns a sha256 over a DuckDB file's tables (sorted rows, as Arrow IPC) and view definitions.

    DuckDB's file bytes differ between two writes of the same tables (block
    layout, headers), so the bytes are no content digest.
    """
    import duckdb
    import pyarrow as pa

    h = hashlib.sha256()
    con = duckdb.connect(str(path), read_only=True)
    try:
        q = "SELECT table_name, table_type FROM information_schema.tables WHERE table_schema = 'main' ORDER BY 1"
        for name, kind in con.execute(q).fetchall():
            h.update(f"{kind}:{name}\0".encode())
            if kind == "VIEW":
                sql = con.execute("SELECT sql FROM duckdb_views() WHERE view_name = ?", [name]).fetchall()[0][0]
                h.update(sql.encode())
                continue
            table = con.sql(f'SELECT * FROM "{name}" ORDER BY ALL').to_arrow_table().combine_chunks()
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
            h.update(sink.getvalue().to_pybytes())
    finally:
        con.close()
    return h.hexdigest()


def content_sha256(path: Path) -> str:
    """Returns the sha256 of what a file holds: its bytes, or for a DuckDB file its tables and views."""
    return duckdb_content_sha256(path) if Path(path).suffix == ".duckdb" else file_sha256(path)


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(root: Path) -> str:
    """Writes root/manifest.json (every file's size, mtime and sha256); returns the digest."""
    entries = {}
    for p in _files(root):
        st = p.stat()
        entries[str(p.relative_to(root))] = {
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "sha256": content_sha256(p),
        }
    (root / MANIFEST).write_text(json.dumps(entries, indent=1, sort_keys=True))
    return manifest_digest(entries)


def file_digest_in(ref: ArtifactRef, rel: str) -> str:
    """Returns the sha256 its manifest records for one file of a published artifact (nothing is re-read)."""
    return json.loads((ref.path / MANIFEST).read_text())[rel]["sha256"]


def manifest_digest(entries: dict) -> str:
    """Returns the content digest: the payload files only, not meta.json (which names the inputs).

    Two builds with the same content share a digest even when their inputs
    differ, so downstream steps keyed on it stay cached.
    """
    return stable_hash({k: v["sha256"] for k, v in entries.items() if k != META})


def current_digest(root: Path) -> str | None:
    """Returns the digest of the artifact as it is on disk, or None if missing or changed.

    Files whose size and mtime match the manifest are trusted; others are re-hashed.
    """
    mf = root / MANIFEST
    if not mf.exists():
        return None
    entries = json.loads(mf.read_text())
    on_disk = {str(p.relative_to(root)) for p in _files(root)}
    if on_disk != set(entries):
        return None
    for rel, e in entries.items():
        st = (root / rel).stat()
        if st.st_size != e["size"]:
            return None
        if st.st_mtime_ns != e["mtime_ns"] and content_sha256(root / rel) != e["sha256"]:
            return None
    return manifest_digest(entries)


def artifact_dir(run_root: Path, kind: str, identity: str) -> Path:
    return Path(run_root) / ARTIFACTS_DIR / kind / identity[:20]


def load_ref(root: Path) -> ArtifactRef:
    """Returns the reference of a published artifact folder; raises if it is missing or changed."""
    digest = current_digest(root)
    if digest is None:
        raise ArtifactError(f"artifact {root} is missing, incomplete or was modified after publication")
    meta = json.loads((root / META).read_text())
    return ArtifactRef(
        kind=meta["kind"], identity=meta["identity"], uri=str(root), digest=digest, meta=meta.get("summary", {})
    )


def built_before(ref: ArtifactRef, since: float) -> bool:
    """Returns True when the artifact was built before `since` (a cache hit for a call that started then)."""
    return (ref.meta.get(BUILD_INFO) or {}).get("finished_at", since) < since


def check_ref(ref: ArtifactRef) -> Path:
    """Returns the artifact's folder after checking it still has the digest the ref names."""
    digest = current_digest(ref.path)
    if digest != ref.digest:
        state = "missing" if digest is None else f"changed (digest {digest[:12]} != {ref.digest[:12]})"
        raise ArtifactError(f"input artifact {ref.kind} at {ref.uri} is {state}; rerun its step")
    return ref.path


class Plan(BaseModel):
    """What a step is about to produce: where, of what kind, from which inputs."""

    run_root: str
    kind: str
    inputs: dict[str, Any]

    @property
    def identity(self) -> str:
        return stable_hash({"kind": self.kind, **self.inputs})

    @property
    def final_dir(self) -> Path:
        return artifact_dir(Path(self.run_root), self.kind, self.identity)


def _log_build(plan: Plan) -> None:
    """Appends (kind, identity, host, pid, time) to run_root/artifacts/builds.jsonl: who built what, when."""
    import socket
    import time

    line = json.dumps(
        {
            "kind": plan.kind,
            "identity": plan.identity,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "at": time.time(),
        }
    )
    with open(Path(plan.run_root) / ARTIFACTS_DIR / BUILDS_LOG, "a") as fh:  # one short append: atomic
        fh.write(line + "\n")


def work_dir(plan: Plan) -> Path:
    """Returns the resumable folder an artifact is built in before publication."""
    return plan.final_dir.with_name(plan.final_dir.name + PARTIAL_SUFFIX)


def materialize(plan: Plan, build: Callable[[Path], dict[str, Any]], force: bool = False) -> ArtifactRef:
    """Returns the artifact `plan` describes, building it only if absent (or if `force`).

    `build(work_dir)` writes the artifact's files into a resumable work folder
    and returns a small summary; the folder is then published atomically. A
    published artifact that was modified or partly deleted is rebuilt.
    """
    final = plan.final_dir
    if current_digest(final) is not None and not force:
        return load_ref(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    # One builder per identity, across processes and machines sharing the run root: a second run or worker
    # that needs the same artifact waits here, then finds it published and reuses it.
    with FileLock(str(final.with_name(final.name + LOCK_SUFFIX))):
        if current_digest(final) is not None and not force:
            return load_ref(final)
        return _build_and_publish(plan, build, force)


def _build_and_publish(plan: Plan, build: Callable[[Path], dict[str, Any]], force: bool) -> ArtifactRef:
    kind, identity_inputs, identity, final = plan.kind, plan.inputs, plan.identity, plan.final_dir
    work = work_dir(plan)
    _log_build(plan)
    if force and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    summary = build(work)
    # when and how long: meta.json is outside the digest, so timings never change an artifact's content
    summary = {**summary, BUILD_INFO: {"finished_at": time.time(), "seconds": round(time.time() - started, 2)}}
    meta = {"kind": kind, "identity": identity, "inputs": identity_inputs, "summary": summary}
    (work / META).write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
    write_manifest(work)
    if final.exists():  # forced or modified after publication: swap in the new build
        old = final.with_name(final.name + f".old{os.getpid()}")
        os.replace(final, old)
        os.replace(work, final)
        shutil.rmtree(old)
    else:
        os.replace(work, final)
    return load_ref(final)
