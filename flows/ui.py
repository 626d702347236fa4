"""What a person sees of a step: its run log, progress bars, UI tables and summary card, and lineage records.

None of this shapes an artifact, so none of it is part of an artifact's
identity: a step's `build` reaches it only through `Build`'s methods
(flows/runner.py).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.context import FlowRunContext, TaskRunContext
from prefect.logging import get_run_logger

from bidsml.report.markdown import artifact_key, inline_images, png_markdown, round_sig
from bidsml.report.run import composition_frame, evaluation_frame, evaluation_pivot
from flows.processes import raise_if_stopping
from storage.lineage import record_artifact
from storage.names import BUILD_INFO
from storage.refs import ArtifactRef, built_before

_log = logging.getLogger("bidsflow")


def in_run_context() -> bool:
    """Returns True inside a Prefect flow or task run (where artifacts and run logs can be posted)."""
    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def logger():
    """Returns the Prefect run logger inside a run (the UI's Logs tab), else the `bidsflow` logger."""
    return get_run_logger() if in_run_context() else _log


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
    root = Path(ref.uri).parents[2]
    record_artifact(root, ref, step, flow_run_id(), params, inputs, root_flow_run_id(), label=tag)
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

    def __init__(self, key: str, description: str, log_every_pct: float = 10.0, total: int | None = None):
        self.description = description
        self.id = create_progress_artifact(progress=0.0, key=key, description=description) if in_run_context() else None
        self.last = 0.0
        self.log_every, self.last_logged = log_every_pct, -1.0
        self.bar = None  # the terminal's progress bar, made at the first update (when the total is known)
        if total:
            self.update(0, total)

    def update(self, done: float, total: float, **info: Any) -> None:
        from tqdm.auto import tqdm

        raise_if_stopping()  # SIGTERM / Ctrl-C: a step in a worker thread stops here
        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.description, leave=False)
        self.bar.total = total
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.bar.close()
        pct = 100.0 * done / max(total, 1)
        if self.id is not None and (pct - self.last >= 2.0 or done >= total):  # at most ~50 updates
            update_progress_artifact(self.id, progress=pct)
            self.last = pct
        if pct - self.last_logged >= self.log_every or (done >= total and self.last_logged < 100):
            extra = "".join(f", {k} {round_sig(v)}" for k, v in info.items())
            logger().info(f"{self.description}: {int(done)}/{int(total)} ({pct:.0f}%){extra}")
            self.last_logged = pct


CACHED_SUFFIX = " · cached"


def mark_cached(built: dict) -> None:
    """Renames the current flow run `<name> · cached` and logs when and in how long its artifact was built."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(built["finished_at"]))
    logger().info(f"cached: artifact built {when} in {built.get('seconds', 0):.1f} s; nothing recomputed")
    if in_run_context() and flow_run.id and not str(flow_run.name).endswith(CACHED_SUFFIX):
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run.id, name=f"{flow_run.name}{CACHED_SUFFIX}")


def asset_key(path: Path | str) -> str:
    """Returns the Prefect asset key of an artifact folder."""
    return "file://" + str(Path(path).resolve()).replace(" ", "%20")


# ---- a run's cards: its report, tables and lineage ----------------------------------------------------------------


def post_report(report: Path, key: str, description: str) -> None:
    """Posts a report (markdown, its PNGs inline) as the UI card `key`."""
    create_markdown_artifact(inline_images(report.read_text(), report.parent), key=key, description=description)


def readable(rows: list[dict]) -> list[dict]:
    """Returns table rows for the UI: floats to 4 significant digits."""
    return [{k: round_sig(v) if isinstance(v, float) else v for k, v in row.items()} for row in rows]


def post_run_cards(
    report: Path, evals: list, selections: list, graph: str, lineage_png: Path, run_id: str, prefix: str
) -> None:
    """Posts the run's report (plots inline), evaluation and composition tables and lineage graph to the UI."""
    from prefect.artifacts import create_table_artifact

    post_report(report, f"{prefix}-report", f"run report ({prefix})")
    ev = evaluation_pivot(evaluation_frame([e.meta for e in evals]))
    create_table_artifact(
        readable(ev.to_dict("records")), key=f"{prefix}-evaluation", description="evaluation: score / gold NLL"
    )
    comp = composition_frame([s.meta for s in selections])
    create_table_artifact(
        readable(comp.to_dict("records")), key=f"{prefix}-composition", description="selection composition"
    )
    create_markdown_artifact(
        "\n".join(
            [
                "### Lineage of this run's artifacts",
                "",
                f"Every node is an artifact (step, kind, content digest); `bidsflow lineage {run_id[:8]}` prints "
                "the same graph with parameters and paths.",
                "",
                png_markdown(lineage_png, "lineage"),
                "",
                "Mermaid source (drawn by Prefect's V2 UI and by markdown viewers that render mermaid):",
                "",
                "```mermaid",
                graph,
                "```",
            ]
        ),
        key=f"{prefix}-lineage",
        description="artifact lineage (image and mermaid)",
    )
