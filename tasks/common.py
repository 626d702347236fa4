"""What every step task shares: the artifact cache policy, code versions, lineage and UI artifacts."""

from __future__ import annotations

import base64
import hashlib
import inspect
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import CachePolicy
from prefect.context import get_run_context

from bidsml.config import Recipe
from storage.lineage import record_artifact
from storage.refs import ArtifactRef, Plan, check_ref, current_digest, stable_hash


def code_version(*modules: ModuleType) -> str:
    """Returns a hash of the source of the modules a step runs (its code identity)."""
    h = hashlib.sha256()
    for m in modules:
        h.update(inspect.getsource(m).encode())
    return h.hexdigest()[:16]


def run_root(recipe: Recipe) -> str:
    return str(Path(recipe.run_root).resolve())


def model_inputs(recipe: Recipe) -> dict[str, Any]:
    """Returns the identity inputs of steps that run the model: its weights and the sequence length."""
    from bidsml.model import model_fingerprint

    return {"model": model_fingerprint(recipe.model), "max_seq_length": recipe.model.max_seq_length}


def ref_inputs(**refs: ArtifactRef | None) -> dict[str, str | None]:
    """Returns {name: digest} for input refs, after checking each is still intact on disk."""
    out = {}
    for name, ref in refs.items():
        if ref is not None:
            check_ref(ref)
        out[name] = ref.digest if ref is not None else None
    return out


@dataclass
class ArtifactCachePolicy(CachePolicy):
    """Cache key = the step's artifact identity (the same `Plan` the task body builds).

    The identity hashes input digests, the recipe values the step reads and
    the step's code version, so an edited input or recipe value changes the
    key. The key does not say whether the output still exists: callers check
    that with `output_is_stale` and refresh the cache (see flows/steps.py).
    """

    plan: Callable[..., Plan] | None = None

    def compute_key(
        self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        inputs = {k: v for k, v in inputs.items() if k != "refresh"}
        try:
            plan = self.plan(**inputs)
        except Exception:  # an input is missing/changed: run the body, which says why
            return None
        return stable_hash({"identity": plan.identity, "kind": plan.kind})


def output_is_stale(task, *args: Any) -> bool:
    """Returns True when the artifact a task call would return is missing or was modified."""
    try:
        plan = task.cache_policy.plan(*args)
    except Exception:
        return True
    return current_digest(plan.final_dir) is None


def flow_run_id() -> str | None:
    try:
        ctx = get_run_context()
    except Exception:
        return None
    fr = getattr(ctx, "flow_run", None) or getattr(getattr(ctx, "task_run", None), "flow_run_id", None)
    return str(getattr(fr, "id", fr)) if fr else None


def root_flow_run_id() -> str | None:
    """Returns the id of the outermost flow run (the pipeline or `select` run a user launched)."""
    try:
        from prefect.runtime import flow_run

        return str(flow_run.root_flow_run_id) if flow_run.root_flow_run_id else None
    except Exception:
        return None


MAX_INLINE_PNG = 2_000_000  # bytes; larger plots are linked by path only


def png_markdown(path: Path, alt: str) -> str:
    """Returns markdown showing a PNG inline (data URI, so the Prefect UI can display it) plus its path."""
    path = Path(path)
    data = path.read_bytes() if path.exists() else b""
    if not data or len(data) > MAX_INLINE_PNG:
        return f"{alt}: `{path}`"
    return f"![{alt}](data:image/png;base64,{base64.b64encode(data).decode()})\n\n`{path}`"


def inline_images(markdown: str, folder: Path) -> str:
    """Returns report markdown with its relative PNG links replaced by inline images (for a Prefect artifact)."""
    return re.sub(
        r"!\[([^\]]*)\]\(([^)/:]+\.png)\)", lambda m: png_markdown(Path(folder) / m.group(2), m.group(1)), markdown
    )


def publish(
    ref: ArtifactRef,
    step: str,
    params: dict[str, Any],
    inputs: list[ArtifactRef],
    started: float,
    images: dict[str, Path] | None = None,
) -> ArtifactRef:
    """Records lineage and posts a markdown summary artifact for a step's output; returns the ref.

    The summary gives the inputs, parameters, counts, wall time, output
    location and `images` (title -> PNG) inline.
    """
    record_artifact(Path(ref.uri).parents[2], ref, step, flow_run_id(), params, inputs, root_flow_run_id())
    lines = [
        f"### {step}: `{ref.kind}` artifact",
        f"- location: `{ref.uri}`",
        f"- digest: `{ref.digest[:16]}`",
        f"- seconds: {time.time() - started:.1f}",
        "- inputs: " + (", ".join(f"{i.kind} `{i.digest[:12]}`" for i in inputs) or "none"),
        "",
        "```json",
        json.dumps({"params": params, "summary": ref.meta}, indent=1, default=str)[:4000],
        "```",
        *[png_markdown(path, title) for title, path in (images or {}).items()],
    ]
    try:
        create_markdown_artifact(
            "\n".join(lines), key=f"{step.replace('_', '-')}-summary", description=f"{step} output"
        )
    except Exception:  # no Prefect run context (task.fn in tests)
        pass
    return ref


class Progress:
    """A Prefect progress artifact (the UI's progress bar of a long step); silent outside a run."""

    def __init__(self, key: str, description: str):
        try:
            self.id = create_progress_artifact(progress=0.0, key=key, description=description)
        except Exception:  # no Prefect run context
            self.id = None
        self.last = 0.0

    def update(self, done: float, total: float) -> None:
        pct = 100.0 * done / max(total, 1)
        if self.id is not None and (pct - self.last >= 2.0 or done >= total):  # at most ~50 updates
            update_progress_artifact(self.id, progress=pct)
            self.last = pct
