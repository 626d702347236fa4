"""What every step task shares: the artifact cache policy, code versions, lineage and UI artifacts."""

from __future__ import annotations

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
from bidsml.markdown import artifact_key, png_markdown, round_sig, run_tag  # noqa: F401  (re-exported to tasks)
from bidsml.model import model_dir, model_source_config
from bidsml.model_sources import DEFAULT_CACHE, digest_cache
from storage.identity import code_identity, weights_digest
from storage.lineage import record_artifact
from storage.names import BUILD_INFO
from storage.refs import ArtifactRef, Plan, built_before, check_ref, current_digest, stable_hash

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


def summary_rows(values: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Returns (dotted key, short text) rows of a nested summary: floats to 4 significant digits, long lists cut."""
    rows: list[tuple[str, str]] = []
    for k, v in values.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and len(rows) < 60:
            rows += summary_rows(v, key + ".")
        elif isinstance(v, list | tuple):
            shown = ", ".join(str(round_sig(x)) for x in list(v)[:8])
            rows.append((key, f"[{shown}{', ...' if len(v) > 8 else ''}] ({len(v)})" if len(v) > 8 else f"[{shown}]"))
        else:
            rows.append((key, str(round_sig(v))))
    return rows


def publish(
    ref: ArtifactRef,
    step: str,
    params: dict[str, Any],
    inputs: list[ArtifactRef],
    started: float,
    images: dict[str, Path] | None = None,
    tag: str | None = None,
) -> ArtifactRef:
    """Records lineage and posts a markdown summary artifact for a step's output; returns the ref.

    The summary gives the inputs, parameters and counts as short tables, the
    wall time, output location and `images` (title -> PNG) inline. Its key is
    the step plus `tag` (see `run_tag`), so each selection, fine-tune and
    evaluation keeps its own card and history in the UI.
    """
    record_artifact(Path(ref.uri).parents[2], ref, step, flow_run_id(), params, inputs, root_flow_run_id())
    built = ref.meta.get(BUILD_INFO) or {}
    cached = built_before(ref, started)
    rows = summary_rows({k: v for k, v in ref.meta.items() if k not in (BUILD_INFO, "tasks", "task_stats", "fidelity")})
    lines = [
        f"### {step}{f' {tag}' if tag else ''}: `{ref.kind}` artifact" + (" (cached)" if cached else ""),
        f"- location: `{ref.uri}`",
        f"- digest: `{ref.digest[:16]}`",
        f"- {'cached: built' if cached else 'computed in'} {built.get('seconds', time.time() - started):.1f} s"
        + (f", {time.strftime('%Y-%m-%d %H:%M', time.localtime(built['finished_at']))}" if cached else ""),
        "- inputs: " + (", ".join(f"{i.kind} `{i.digest[:12]}`" for i in inputs) or "none"),
        "",
        "| parameter | value |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in summary_rows(params)],
        "",
        "| summary | value |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in rows[:60]],
        "",
        *[png_markdown(path, title) for title, path in (images or {}).items()],
    ]
    logger().info(f"{step}{f' {tag}' if tag else ''}: {ref.kind} {ref.digest[:12]} at {ref.uri}")
    if in_run_context():
        create_markdown_artifact(
            "\n".join(lines), key=artifact_key(step, tag, "summary"), description=f"{step} {tag or ''} output".strip()
        )
    return ref


class Progress:
    """A Prefect progress artifact (the UI's progress bar of a long step) that also logs every ~10% to the run log.

    `update(done, total, **info)`: `info` (e.g. loss=2.31) goes into the log
    line, so the run's Logs tab tells how training and long steps went.
    """

    def __init__(self, key: str, description: str, log_every_pct: float = 10.0):
        self.description = description
        self.id = create_progress_artifact(progress=0.0, key=key, description=description) if in_run_context() else None
        self.last = 0.0
        self.log_every, self.last_logged = log_every_pct, -1.0

    def update(self, done: float, total: float, **info: Any) -> None:
        pct = 100.0 * done / max(total, 1)
        if self.id is not None and (pct - self.last >= 2.0 or done >= total):  # at most ~50 updates
            update_progress_artifact(self.id, progress=pct)
            self.last = pct
        if pct - self.last_logged >= self.log_every or (done >= total and self.last_logged < 100):
            extra = "".join(f", {k} {round_sig(v)}" for k, v in info.items())
            logger().info(f"{self.description}: {int(done)}/{int(total)} ({pct:.0f}%){extra}")
            self.last_logged = pct
