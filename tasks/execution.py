"""Where tasks run: this process (`local`) or a Dask cluster through prefect-dask (`execution.task_runner: dask`).

`cluster(recipe)` yields the scheduler address for a run: the recipe's
`execution.address` (an existing scheduler, e.g. one started by
dask-jobqueue's SLURMCluster or dask-kubernetes), else a LocalCluster
started for the run (and closed after it), or None for local execution.
Nested uses reuse the active cluster, so the pipeline starts one and every
step's fan-out (feature shards, method x budget branches) submits to it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from bidsml.config import Recipe

_ACTIVE: list[str] = []  # the address of the cluster the current run uses


@contextmanager
def cluster(recipe: Recipe) -> Iterator[str | None]:
    """Yields the Dask scheduler address for this run (None: run locally)."""
    ex = recipe.execution
    if ex.task_runner == "local":
        yield None
        return
    if _ACTIVE:
        yield _ACTIVE[-1]
        return
    if ex.address:
        _ACTIVE.append(ex.address)
        try:
            yield ex.address
        finally:
            _ACTIVE.pop()
        return
    from distributed import LocalCluster

    resources = {"GPU": ex.gpus_per_worker} if ex.gpus_per_worker else None
    with LocalCluster(
        n_workers=ex.n_workers,
        threads_per_worker=ex.threads_per_worker,
        processes=True,
        resources=resources,
        dashboard_address=None,
    ) as local:
        _ACTIVE.append(local.scheduler_address)
        try:
            yield local.scheduler_address
        finally:
            _ACTIVE.pop()


def dask_runner(address: str):
    """Returns a Prefect task runner that submits to the Dask scheduler at `address`."""
    from prefect_dask import DaskTaskRunner

    return DaskTaskRunner(address=address)


def gpu_resources(recipe: Recipe) -> dict:
    """Returns the Dask resources a GPU task asks for (one GPU) when workers declare GPUs, else none."""
    return {"GPU": 1} if recipe.execution.gpus_per_worker else {}


def pin_worker_gpu() -> int | None:
    """On a Dask worker with CUDA, makes GPU (worker index mod GPUs) the current device; returns it (else None).

    A LocalCluster's workers all see every GPU: this gives each its own, so
    `cuda` in a step means that worker's GPU. Workers started with their own
    CUDA_VISIBLE_DEVICES (dask-cuda, the README's commands) see one GPU: 0.
    """
    import torch

    if not torch.cuda.is_available():
        return None
    try:
        from distributed import get_worker

        name = get_worker().name
    except ValueError:  # not on a Dask worker
        return None
    index = (int(name) if str(name).isdigit() else sum(map(ord, str(name)))) % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return index
