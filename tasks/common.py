"""What every step task shares: the artifact cache policy, code versions, lineage and UI artifacts."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import CachePolicy
from prefect.context import FlowRunContext, TaskRunContext
from prefect.logging import get_run_logger

from bidsml.config import Recipe
from bidsml.errors import ArtifactError
from bidsml.markdown import png_markdown
from bidsml.model import model_dir, model_source_config
from bidsml.model_sources import DEFAULT_CACHE, digest_cache
from storage.identity import code_identity, weights_digest
from storage.lineage import record_artifact
from storage.refs import ArtifactRef, Plan, check_ref, current_digest, stable_hash

_log = logging.getLogger("bidsflow")


def code_version(module_name: str) -> str:
    """Returns the code identity of a step: its task module and every project module it imports, transitively."""
    return code_identity(module_name)


def in_run_context() -> bool:
    """Returns True inside a Prefect flow or task run (where artifacts and run logs can be posted)."""
    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def logger():
    """Returns the Prefect run logger inside a run (the UI's Logs tab), else the `bidsflow` logger."""
    return get_run_logger() if in_run_context() else _log


def run_root(recipe: Recipe) -> str:
    return str(Path(recipe.run_root).resolve())


def model_inputs(recipe: Recipe) -> dict[str, Any]:
    """Returns the identity inputs of steps that run the model: its weights and the sequence length."""
    return {"model": model_identity(recipe), "max_seq_length": recipe.model.max_seq_length}


def model_identity(recipe: Recipe) -> dict[str, Any]:
    """Returns what identifies the model: a content hash of its files (weights, config, tokenizer) and settings."""
    return {
        "files": weights_digest(model_dir(recipe.model), digest_cache(DEFAULT_CACHE)),
        **model_source_config(recipe.model),
    }


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
        except ArtifactError as err:  # an input artifact is missing/changed: no cache; the body says why
            logger().warning(f"no cache key ({err}); the step runs and reports the problem")
            return None
        return stable_hash({"identity": plan.identity, "kind": plan.kind})

    def output_is_stale(self, *args: Any) -> bool:
        """Returns True when the artifact a task call with `args` would return is missing or was modified."""
        try:
            plan = self.plan(*args)
        except ArtifactError:  # an input is missing or changed: the step runs and says why
            return True
        return current_digest(plan.final_dir) is None


def flow_run_id() -> str | None:
    """Returns the id of the current flow run (None outside a run: `task.fn` in tests, plain scripts)."""
    task_ctx, flow_ctx = TaskRunContext.get(), FlowRunContext.get()
    if task_ctx is not None and task_ctx.task_run.flow_run_id:
        return str(task_ctx.task_run.flow_run_id)
    if flow_ctx is not None and flow_ctx.flow_run is not None:
        return str(flow_ctx.flow_run.id)
    return None


def root_flow_run_id() -> str | None:
    """Returns the id of the outermost flow run (the pipeline or `select` run a user launched)."""
    if not in_run_context():
        return None
    from prefect.runtime import flow_run

    return str(flow_run.root_flow_run_id) if flow_run.root_flow_run_id else None


def post_table(rows: list[dict], key: str, description: str) -> None:
    """Posts a table artifact inside a run; outside one, logs that it was not posted."""
    if not in_run_context():
        _log.info(f"no Prefect run: table {key!r} not posted")
        return
    from prefect.artifacts import create_table_artifact

    create_table_artifact(rows, key=key, description=description)


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
    logger().info(f"{step}: {ref.kind} {ref.digest[:12]} at {ref.uri}")
    if in_run_context():
        create_markdown_artifact(
            "\n".join(lines), key=f"{step.replace('_', '-')}-summary", description=f"{step} output"
        )
    return ref


class Progress:
    """A Prefect progress artifact (the UI's progress bar of a long step); silent outside a run."""

    def __init__(self, key: str, description: str):
        self.id = create_progress_artifact(progress=0.0, key=key, description=description) if in_run_context() else None
        self.last = 0.0

    def update(self, done: float, total: float) -> None:
        pct = 100.0 * done / max(total, 1)
        if self.id is not None and (pct - self.last >= 2.0 or done >= total):  # at most ~50 updates
            update_progress_artifact(self.id, progress=pct)
            self.last = pct
