"""A real Dask cluster, started the way docs/cluster.md says: `dask scheduler` + `dask worker` processes.

The scheduler and workers are separate processes started from another
working directory, one that holds folders named `storage`, `tasks` and
`bidsml` (as a user's cwd or Dask's own spill folder may): the identities
of every step must not change. `bidsflow run` is started as a user starts
it. Every process a test starts is stopped, whatever the outcome.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import Cluster
from tests.conftest import free_port as _free_port

pytestmark = pytest.mark.e2e

REPO = Path(__file__).parents[1]
BIN = Path(sys.executable).parent
RECIPE = REPO / "recipes" / "tiny.yaml"
# docs/cluster.md's worker command (without --resources GPU=1: no GPU here); threads=1 on both sides (see execution.threads)
# a pruned model (magnitude: no calibration) and paser: the degradation step's blocks are sharded too
SAME = [
    *("--set", "execution.threads=1", "--set", "features.chunk_rows=8"),
    *("--set", "selection.methods=[random,bids,paser]", "--set", "prune={method: magnitude, sparsity: 0.5}"),
]


@pytest.fixture()
def cluster(tmp_path):
    c = Cluster(tmp_path / "node")
    try:
        yield c
    finally:
        c.stop()


def _bidsflow(args: list[str], tmp_path: Path, timeout: float = 900, background: bool = False):
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    cmd = [str(BIN / "bidsflow"), *args]
    if background:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _run_args(run_root: Path, *extra: str) -> list[str]:
    return ["run", "--recipe", str(RECIPE), "--set", f"run_root={run_root}", *SAME, *extra]


def _artifacts(run_root: Path) -> dict[str, tuple[str, str]]:
    """Returns {kind/identity: (identity, digest)} of every published artifact under a run root."""
    out = {}
    for meta in (run_root / "artifacts").glob("*/*/meta.json"):
        if meta.parent.name.endswith(".partial"):
            continue
        m = json.loads(meta.read_text())
        manifest = json.loads((meta.parent / "manifest.json").read_text())
        out[f"{m['kind']}/{m['identity']}"] = sorted((k, v["sha256"]) for k, v in manifest.items() if k != "meta.json")
    return out


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The same recipe run in one process (no Dask): the reference for every cluster run."""
    tmp = tmp_path_factory.mktemp("one-process")
    out = _bidsflow(_run_args(tmp / "runs"), tmp)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return tmp / "runs"


def test_step_identities_do_not_depend_on_cwd_sys_path_or_process(cluster, tmp_path):
    from tasks.registry import step_identities

    here = step_identities()
    assert len(here) >= 9
    probe = "import json; from tasks.registry import step_identities; print(json.dumps(step_identities()))"
    for cwd in (REPO, cluster.node):  # a fresh process; one whose cwd (first on sys.path) holds decoy packages
        out = subprocess.run([sys.executable, "-c", probe], cwd=cwd, capture_output=True, text=True, check=True)
        assert json.loads(out.stdout) == here, f"cwd {cwd}"
    cluster.start_scheduler()
    cluster.start_workers(1)
    from distributed import Client

    with Client(cluster.address, timeout=30) as c:
        on_worker = next(iter(c.run(step_identities).values()))
        spill_first = next(iter(c.run(lambda: sys.path[0]).values()))
    assert on_worker == here
    assert spill_first  # the worker's scratch folder leads sys.path (the case that used to break identities)


def test_pipeline_on_a_real_cluster_builds_what_one_process_builds(cluster, one_process, tmp_path):
    cluster.start_scheduler()
    cluster.start_workers(2)
    root = tmp_path / "runs"
    out = _bidsflow(
        _run_args(root, "--set", "execution.task_runner=dask", "--set", f"execution.address={cluster.address}"),
        tmp_path,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert _artifacts(root) == _artifacts(one_process)  # every identity and every file's content
    assert not list((root / "artifacts").glob("*/*.partial")), "a work folder was left behind"
    record = json.loads(next((root / "run-records").glob("*.json")).read_text())
    features = record["refs"]["features"]["main"]["meta"]
    assert features["driver_chunks"] == 0 and features["chunks_by"], features
    assert all(k.startswith("worker w") for k in features["chunks_by"]), features["chunks_by"]
    n_chunks = -(-features["n_train"] // 8) + -(-features["n_val"] // 8)
    assert sum(features["chunks_by"].values()) == n_chunks  # each chunk once, all on the workers
    assert "feature chunks computed by: worker w" in out.stdout + out.stderr  # the log line
    assert "worker w" in Path(record["report"]).read_text()  # the report's step table
    degradation = record["refs"]["degradation"]["main"]["meta"]
    assert sum(degradation["blocks_by"].values()) == degradation["blocks"]
    assert all(k.startswith("worker w") for k in degradation["blocks_by"]), degradation["blocks_by"]
    from distributed import Client

    from flows.execution import code_at_start, project_code

    with Client(cluster.address, timeout=30) as c:  # each worker noted the code it ran (for the stale-code check)
        assert set(c.run(code_at_start).values()) == {project_code()}


def _fails_fast(tmp_path, address: str, *extra: str) -> str:
    t = time.time()
    out = _bidsflow(
        [
            "run",
            "--recipe",
            str(RECIPE),
            "--set",
            f"run_root={tmp_path / 'runs'}",
            "--set",
            "execution.task_runner=dask",
            "--set",
            f"execution.address={address}",
            "--set",
            "execution.connect_timeout_s=3",
            *extra,
        ],
        tmp_path,
        timeout=120,
    )
    text = " ".join((out.stdout + out.stderr).split())
    assert out.returncode == 2, text[-3000:]
    assert "execution.address" in text and address in text and "Traceback" not in text, text[-3000:]
    assert not (tmp_path / "runs" / "artifacts").exists(), "a step ran before the check"
    assert time.time() - t < 60
    return text


def test_no_scheduler_at_the_address_fails_before_any_step(tmp_path):
    text = _fails_fast(tmp_path, f"tcp://127.0.0.1:{_free_port()}")
    assert "no Dask scheduler answered" in text and "firewall" in text


def test_an_address_that_is_not_a_dask_scheduler_fails_before_any_step(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        text = _fails_fast(tmp_path, f"tcp://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
    assert "does not speak Dask" in text


def test_a_scheduler_without_workers_fails_with_the_worker_command(cluster, tmp_path):
    cluster.start_scheduler()
    text = _fails_fast(tmp_path, cluster.address, "--set", "execution.wait_for_workers_s=3")
    assert "no workers after 3 s" in text and f"dask worker {cluster.address}" in text


def test_scheduler_killed_during_featurization_then_rerun_resumes_to_the_same_store(cluster, one_process, tmp_path):
    cluster.start_scheduler()
    cluster.start_workers(2)
    root = tmp_path / "runs"
    args = _run_args(
        root,
        "--set",
        "execution.task_runner=dask",
        "--set",
        f"execution.address={cluster.address}",
        "--set",
        "execution.shard_chunks=1",
        "--set",
        "selection.methods=[random]",  # the resume is the features step's: one branch downstream is enough
    )
    run = _bidsflow(args, tmp_path, background=True)
    try:
        deadline = time.time() + 600
        while time.time() < deadline and run.poll() is None:
            if list(root.glob("artifacts/features/*.partial/chunks_done/*")):
                break
            time.sleep(0.05)
        assert run.poll() is None, "the run ended before featurization"
        os.killpg(cluster.scheduler.pid, signal.SIGKILL)  # the scheduler dies mid-featurization
        text = " ".join(run.communicate(timeout=300)[0].split())
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 2, text[-3000:]
    assert (
        "scheduler stopped answering during the features step (feature shards)" in text
        and "rerun the same command" in text
    )
    done = {p.name: p.stat().st_mtime_ns for p in root.glob("artifacts/features/*.partial/chunks_done/*")}
    assert done, "finished chunks are kept"
    cluster.stop()  # the old workers too, as an operator restarting the cluster would
    cluster.start_scheduler()
    cluster.start_workers(2)
    out = _bidsflow(args, tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    mine, reference = _artifacts(root), _artifacts(one_process)
    assert {"features", "influence", "finetune"} <= {k.split("/")[0] for k in mine}
    # the same store as an uninterrupted run, file by file (this run's artifacts: the random branch of it)
    assert {k: reference.get(k) for k in mine} == mine
    (features,) = [p for p in root.glob("artifacts/features/*") if p.is_dir()]
    after = {p.name: p.stat().st_mtime_ns for p in (features / "chunks_done").iterdir()}
    assert all(after[name] == mtime for name, mtime in done.items()), "a finished chunk was computed again"
    record = json.loads(next((root / "run-records").glob("*.json")).read_text())
    assert record["refs"]["features"]["main"]["meta"]["driver_chunks"] == 0


def test_a_worker_running_code_older_than_the_files_is_refused_before_any_step(cluster, tmp_path):
    cluster.start_scheduler()
    cluster.start_workers(1)
    from distributed import Client

    def ran_old_code():  # as if the worker had imported the project before an edit
        import flows.execution

        flows.execution._CODE_AT_START[:] = ["0" * 16]

    with Client(cluster.address, timeout=30) as c:
        c.run(ran_old_code)
    text = _fails_fast(tmp_path, cluster.address)
    assert "worker(s) w0 (tcp://127.0.0.1:" in text and "run the project's code as it was when they started" in text
    assert "Restart the workers" in text
