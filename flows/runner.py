"""The one way a step runs: `run_step(step, recipe, inputs, params)`.

It plans the call once (identity = the build's code + the declared recipe
sections + the input digests + the parameters, tasks/registry.py), and
`materialize` is the cache: a published artifact with that identity is
returned as is, else `build` writes a new one. Prefect sees the same plan:
the step's task is keyed by the identity (a cache hit shows `Cached` in the
UI), materializes the artifact as an asset with its inputs upstream, and is
refreshed when the artifact on disk was deleted or modified.

`map_on_runner` is how work fans out (feature shards, method x budget
branches): always submitted to the run's task runner, this process's by
default, a Dask cluster's with `execution.task_runner: dask`.
"""

from __future__ import annotations

import contextlib
import importlib
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import dask
from prefect import Flow, flow, task
from prefect.assets import Asset, AssetProperties
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import MaterializingTask
from pydantic import BaseModel

from bidsml.report.markdown import artifact_key, round_sig, run_tag
from flows.execution import (
    cluster,
    dask_runner,
    gpu_resources,
    note_code_at_start,
    pin_worker_gpu,
    reporting_lost_scheduler,
    torch_threads,
)
from flows.ui import Progress, asset_key, logger, mark_cached, post_table, publish
from tasks.registry import plan
from tasks.step import Sections, Step
from storage.names import BUILD_INFO, PREFECT_RESULTS_DIR
from storage.refs import ArtifactRef, Plan, built_before, current_digest, materialize, stable_hash


class StepBuild:
    """What a step's `build` is given (the `Build` protocol of tasks/step.py), inside the run of its step."""

    def __init__(self, step: Step, recipe, inputs: dict, params: BaseModel | None, work: Path, tag: str):
        self.step, self.tag, self._recipe = step, tag, recipe
        self.recipe = Sections(step.name, recipe, step.sections)
        self.inputs, self.params, self.work = inputs, params, work
        self.run_root = Path(recipe.run_root).resolve()
        self.execution = recipe.execution

    def progress(self, description: str, total: int | None = None) -> Progress:
        what = f"{self.step.name} {self.tag} {description}".replace("  ", " ")
        return Progress(artifact_key(f"{self.step.name}-progress", self.tag), what, total=total)

    def log(self, message: str, warning: bool = False) -> None:
        (logger().warning if warning else logger().info)(message)

    def table(self, name: str, rows: list[dict], description: str) -> None:
        rows = [{k: round_sig(v) for k, v in r.items()} for r in rows]
        post_table(rows, key=artifact_key(name, self.tag), description=description)

    def map(self, fn: Callable, calls: Iterable[tuple], name: Callable[..., str], progress: str = "parts") -> list:
        calls = list(calls)
        key = artifact_key(f"{self.step.name}-progress", self.tag)
        names = [name(*c) for c in calls]
        what = f"the {self.step.name} step ({progress})"
        return map_on_runner(self._recipe, fn, calls, names, progress, self.step.pool == "gpu", key, what)


def _materialize(step: Step, plan: Plan, recipe, inputs: dict, params, tag: str, refresh: bool) -> ArtifactRef:
    """The step's task body: the artifact `plan` names, built by the step only when it is not published yet."""
    return materialize(plan, lambda work: step.build(StepBuild(step, recipe, inputs, params, work, tag)), refresh)


def run_step(
    step: Step, recipe, inputs: dict[str, ArtifactRef | None], params: BaseModel | None = None, refresh: bool = False
) -> ArtifactRef:
    """Runs `step` on `inputs` (by Input.key; only those it declares) and returns its artifact's ref.

    Inputs a call does not need (an optional input whose `when` is false) are
    dropped. Published artifacts are reused; `refresh` rebuilds.
    """
    inputs = {
        i.key: inputs.get(i.key) for i in step.inputs if not (i.optional and i.when is not None and not i.when(params))
    }
    the_plan = plan(step, recipe, inputs, params)  # raises ArtifactError naming a missing or changed input
    tag = run_tag(recipe, step.label_of(inputs, params))
    started = time.time()
    stale = current_digest(the_plan.final_dir) is None
    key = stable_hash({"kind": the_plan.kind, "identity": the_plan.identity})
    body = MaterializingTask(
        fn=_materialize,
        assets=[
            Asset(
                key=asset_key(the_plan.final_dir),
                properties=AssetProperties(
                    name=f"{step.name} {the_plan.identity[:12]}",
                    description=f"bidsflow `{step.name}` artifact (identity {the_plan.identity[:16]})",
                ),
            )
        ],
        asset_deps=[asset_key(r.path) for r in inputs.values() if r is not None] or None,
        name=step.name,
        cache_key_fn=lambda *_: key,
        persist_result=True,
        result_storage=Path(recipe.run_root).resolve() / PREFECT_RESULTS_DIR,
        refresh_cache=True if (refresh or stale) else None,
        task_run_name=f"{step.name} {tag}".strip(),
    )
    with torch_threads(recipe.execution.threads):  # the same bits in any process (see execution.threads)
        ref = body(step, the_plan, recipe, inputs, params, tag, refresh)
    if built_before(ref, started):
        mark_cached(ref.meta.get(BUILD_INFO) or {})
    if step.describe is not None:
        table = StepBuild(step, recipe, inputs, params, the_plan.final_dir, tag).table
        ref = ref.model_copy(update={"meta": {**ref.meta, **step.describe(ref, table)}})
    # what `bidsflow lineage` and the summary card show: the recipe sections the step read, and its parameters
    sections = {name: getattr(recipe, name) for name in step.sections}
    params_shown = {k: v.model_dump(mode="json") if isinstance(v, BaseModel) else v for k, v in sections.items()}
    params_shown |= params.model_dump(mode="json") if params is not None else {}
    images = {title: ref.path / file for title, file in step.images.items() if (ref.path / file).exists()}
    given = [r for r in inputs.values() if r is not None]
    return publish(ref, step.name, params_shown, given, started, images=images, tag=tag)


# ---- subflows: a run's steps live and die with the flow run that started them --------------------------------------


@contextlib.contextmanager
def heartbeat_of_the_parent():
    """Within a flow or task run, the flows started inside send no heartbeats of their own: the parent's heartbeat
    (Prefect's crash detection) covers them, as they run in its process. A flow run's own heartbeat thread wakes once
    a second, so each flow run's exit waited for it: ~0.7 s per step, most of a cached step's 1.2 s."""
    from prefect.context import FlowRunContext, TaskRunContext
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    if FlowRunContext.get() is None and TaskRunContext.get() is None:  # a top-level flow keeps its heartbeat
        yield
        return
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


class StepFlow(Flow):
    """A step's flow: called inside another run (the pipeline's, a deployment's, a branch's task), it runs under
    `heartbeat_of_the_parent`; called on its own (`bidsflow step`), it is an ordinary flow with its heartbeat."""

    def __call__(self, *args, **kwargs):
        with heartbeat_of_the_parent():
            return super().__call__(*args, **kwargs)


# ---- fan-out: every part submitted to the run's task runner ------------------------------------------------------


def _resolve(fn: str) -> Callable:
    module, name = fn.split(":")
    return getattr(importlib.import_module(module), name)


@task(name="part")
def run_part(fn: str, call: tuple, threads: int | None) -> Any:
    """Runs one part (`fn(*call)`, fn as 'module:function') on whichever process the task runner chose."""
    pin_worker_gpu()  # on a Dask worker: its own GPU
    note_code_at_start()  # a later run's preflight can tell this worker runs stale code
    with torch_threads(threads):
        return _resolve(fn)(*call)


@flow(name="parts", validate_parameters=False, log_prints=True)
def parts_flow(
    fn: str, calls: list, names: list[str], description: str, retries: int, gpu: dict, threads: int | None, key: str
) -> list:
    """Submits every part to the flow's task runner at once; returns their results in order."""
    submit = run_part.with_options(retries=retries)
    progress = Progress(key, description, total=len(calls))
    with dask.annotate(resources=gpu) if gpu else contextlib.nullcontext():
        futures = [submit.with_options(task_run_name=n).submit(fn, c, threads) for c, n in zip(calls, names)]
    for done, _ in enumerate(as_completed(futures), 1):
        progress.update(done, len(futures))
    return [f.result() for f in futures]


def map_on_runner(
    recipe,
    fn: Callable,
    calls: list[tuple],
    names: list[str],
    description: str,
    gpu: bool,
    key: str | None = None,
    what: str | None = None,
) -> list:
    """Returns [fn(*call) for call in calls], each call a task on the run's task runner (local or Dask).

    `names`: each task run's name; `description`: the fan-out's (its flow run is `<description> on <where>`);
    `key`: its progress bar's artifact key (default: from the description); `what`: the work a lost scheduler
    interrupted, as its error names it (default: the description).
    """
    ex = recipe.execution
    target = f"{fn.__module__}:{fn.__name__}"
    with cluster(recipe) as address:
        if address is None:
            runner, where = ThreadPoolTaskRunner(max_workers=1), "this process"
        else:
            runner, where = dask_runner(address), "Dask"
        run = parts_flow.with_options(task_runner=runner, flow_run_name=f"{description} on {where}")
        resources = gpu_resources(recipe) if gpu else {}
        with reporting_lost_scheduler(recipe, what or f"the {description}") if address else contextlib.nullcontext():
            key = key or artifact_key(description.replace(" ", "-"), run_tag(recipe))
            with heartbeat_of_the_parent():
                return run(target, calls, names, description, ex.retries, resources, ex.threads, key)
