"""Where tasks run: this process (`local`) or a Dask cluster through prefect-dask (`execution.task_runner: dask`).

`cluster(recipe)` yields the scheduler address for a run: the recipe's
`execution.address` (an existing scheduler, e.g. one started by
dask-jobqueue's SLURMCluster or dask-kubernetes), else a LocalCluster
started for the run (and closed after it), or None for local execution.
Nested uses reuse the active cluster, so the pipeline starts one and every
step's fan-out (feature shards, method x budget branches) submits to it.

`check_scheduler(recipe)` is the preflight: before the first step, an
`execution.address` that does not answer, is no Dask scheduler, or has no
workers fails with a `ClusterError` that names the setting and what to check.
`executor()` says who computes (host, pid, Dask worker or driver) for the
record of which process built which chunk.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from bidsml.config import Recipe
from bidsml.errors import ClusterError
from bidsml.model import torch_threads  # noqa: F401  (every step runs under execution.threads)
from tasks.step import executor  # noqa: F401  (who computes: recorded per feature chunk)

WORKER_COMMAND = "dask worker {address} --nworkers 1 --nthreads 1"  # the README's command, one per GPU

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
        check_scheduler(recipe)
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


_CHECKED: set[str] = set()  # scheduler addresses this process has already checked


def check_scheduler(recipe: Recipe) -> None:
    """Fails (ClusterError) unless `execution.address` is a Dask scheduler with at least one worker.

    Connects with `execution.connect_timeout_s`; a scheduler without workers
    is waited on for `execution.wait_for_workers_s` (a warning says so), then
    the error gives the worker command. No-op for local runs and LocalClusters.
    """
    ex = recipe.execution
    if ex.task_runner != "dask" or not ex.address or ex.address in _CHECKED:
        return
    import logging

    from distributed import Client

    where = f"execution.address = {ex.address!r}"
    hint = (
        "Check that `dask scheduler` runs there, that host and port are right (a Prefect or web server's port is "
        "not a Dask scheduler), and that no firewall blocks the port; `execution.connect_timeout_s` sets the wait."
    )
    # The handshake with a server that is not Dask (an HTTP port) never ends: connect in a thread, with a deadline.
    box: dict = {}

    def connect():
        try:
            box["client"] = Client(ex.address, timeout=ex.connect_timeout_s, set_as_default=False)
        except Exception as err:  # OSError, TimeoutError, CommClosedError: all mean "no scheduler answered"
            box["error"] = err

    thread = threading.Thread(target=connect, daemon=True, name="dask-preflight")
    thread.start()
    thread.join(ex.connect_timeout_s + 5)
    if "client" not in box:
        err = box.get("error")
        why = f"{type(err).__name__}: {str(err)[:200]}" if err else "something answered but does not speak Dask"
        raise ClusterError(
            f"{where}: no Dask scheduler answered within {ex.connect_timeout_s:g} s ({why}). {hint}"
        ) from None
    client = box["client"]
    try:
        if not client.scheduler_info().get("workers"):
            logging.getLogger("bidsflow").warning(
                f"{where}: the scheduler has no workers; waiting up to {ex.wait_for_workers_s:g} s for one"
            )
            try:
                client.wait_for_workers(1, timeout=ex.wait_for_workers_s)
            except (TimeoutError, OSError):
                raise ClusterError(
                    f"{where}: the scheduler has no workers after {ex.wait_for_workers_s:g} s. Start them on each "
                    f"machine: `{WORKER_COMMAND.format(address=ex.address)}` (one per GPU, with "
                    "CUDA_VISIBLE_DEVICES); `execution.wait_for_workers_s` sets the wait. (`execution.n_workers` "
                    "only sizes a LocalCluster, when no address is set.)"
                ) from None
        _check_worker_code(client, where)
    finally:
        client.close()
    _CHECKED.add(ex.address)


_CODE_AT_START: list[str] = []  # on a worker: the project's code when its first task ran (its modules loaded then)


def project_code() -> str:
    """Returns one hash over the code identity of every step (tasks/*: what builds artifacts), as the files are now."""
    import hashlib

    from tasks.registry import step_identities

    ids = sorted(step_identities().items())
    return hashlib.sha256("".join(f"{n}={i};" for n, i in ids).encode()).hexdigest()[:16]


def note_code_at_start() -> None:
    """Remembers, on a process's first task, the project code it runs (a worker keeps the modules it imported)."""
    if not _CODE_AT_START:
        _CODE_AT_START.append(project_code())


def code_at_start() -> str | None:
    """Returns the project code this process noted at its first task (None before any)."""
    return _CODE_AT_START[0] if _CODE_AT_START else None


def _check_worker_code(client, where: str) -> None:
    """Fails when a worker runs project code older than the files: it would build artifacts under new identities."""
    now = project_code()
    names = {a: w.get("name", a) for a, w in client.scheduler_info(n_workers=-1)["workers"].items()}
    stale = sorted(
        f"{names.get(a, a)} ({a})" for a, code in client.run(code_at_start).items() if code is not None and code != now
    )
    if stale:
        raise ClusterError(
            f"{where}: worker(s) {', '.join(stale)} run the project's code as it was when they started, not as it "
            "is now (a Dask worker keeps the modules it imported): their artifacts would be built by old code under "
            "new identities. Restart the workers (`dask worker ...`), then rerun."
        )


@contextmanager
def reporting_lost_scheduler(recipe: Recipe, what: str) -> Iterator[None]:
    """Runs the block; an error raised because the scheduler of `execution.address` went away becomes a
    ClusterError that says so (and that a rerun resumes); any other error passes unchanged."""
    try:
        yield
    except Exception as err:
        ex = recipe.execution
        if ex.task_runner != "dask" or not ex.address:
            raise
        try:
            with socket.create_connection(_host_port(ex.address), timeout=min(ex.connect_timeout_s, 5)):
                pass
        except OSError:
            _CHECKED.discard(ex.address)
            raise ClusterError(
                f"execution.address = {ex.address!r}: the Dask scheduler stopped answering during {what} "
                f"({type(err).__name__}). Finished work is kept: restart the scheduler and its workers, then rerun "
                "the same command; finished chunks and steps are not recomputed."
            ) from None
        raise  # the scheduler answers: the error is something else


def _host_port(address: str) -> tuple[str, int]:
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    return host.strip("[]"), int(port)


def gpu_index(own: str, same_host: list[str], n_devices: int, visible: str | None) -> int:
    """Returns the CUDA device a worker uses: its rank among the workers of its host (never shared).

    `same_host`: the names of every worker on this host (own included);
    `visible`: CUDA_VISIBLE_DEVICES. A worker started with one visible GPU
    uses it (device 0); more workers on a host than GPUs fail with the fix.
    """
    if visible is not None and len([d for d in visible.split(",") if d.strip()]) == 1:
        return 0
    order = sorted(same_host, key=lambda n: (0, int(n), "") if str(n).isdigit() else (1, 0, str(n)))
    rank = order.index(own)
    if len(order) > n_devices:
        raise ClusterError(
            f"{len(order)} Dask workers on host {socket.gethostname()} share {n_devices} GPU(s): two would use the "
            "same device. Start one worker per GPU: `CUDA_VISIBLE_DEVICES=<i> "
            f"{WORKER_COMMAND.format(address='<scheduler>')} --resources GPU=1`, or a LocalCluster with "
            "`execution.n_workers` = GPUs."
        )
    return rank


def pin_worker_gpu() -> int | None:
    """On a Dask worker with CUDA, makes this worker's own GPU the current device; returns it (else None).

    Workers on one host are ranked by name (a LocalCluster's 0..n-1, or
    `dask worker --nworkers N`'s names), each rank one device, so no two
    workers share a GPU. Workers started with their own CUDA_VISIBLE_DEVICES
    (dask-cuda, the README's commands) see one GPU: 0.
    """
    import torch

    if not torch.cuda.is_available():
        return None
    try:
        from distributed import get_worker

        worker = get_worker()
    except ValueError:  # not on a Dask worker
        return None
    own = str(worker.name)
    host = worker.address.split("://", 1)[-1].rsplit(":", 1)[0]
    try:
        info = worker.client.scheduler_info(n_workers=-1)["workers"].values()
        same_host = [str(w["name"]) for w in info if w["host"] == host] or [own]
    except Exception:  # no client to the scheduler: this worker alone
        same_host = [own]
    index = gpu_index(own, same_host, torch.cuda.device_count(), os.environ.get("CUDA_VISIBLE_DEVICES"))
    torch.cuda.set_device(index)
    return index
