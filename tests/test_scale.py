"""Scale-out: sharded featurization on a Dask LocalCluster equals one process; safe concurrent builds."""

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bidsml.config import load_recipe
from storage.names import FEATURES_STORE
from tests.conftest import run_names, runs_since, store_arrays, unreadable

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).parents[1]
RECIPE = ROOT / "recipes" / "tiny.yaml"


def _features(recipe):
    from flows.step_flows import STEP_FLOWS as F

    data = F["data"](recipe)
    warm = F["warmup"](recipe, inputs={"data": data})
    return F["features"](
        recipe,
        inputs={
            "data": data,
            "warmup": warm,
            "projection": F["projection"](recipe, inputs={"data": data, "warmup": warm}),
        },
    )


def _shard_runs(since) -> list[str]:
    return [r.state.name for r in runs_since(since, "task") if r.name.startswith("feature shard ")]


def test_dask_shards_build_the_same_store_as_one_process(tmp_path, prefect_harness):
    # one thread everywhere: a matmul's last bits depend on the thread count (see features.threads)
    base = load_recipe(RECIPE).with_overrides({"features.chunk_rows": 4, "features.threads": 1})
    local = _features(base.with_overrides({"run_root": str(tmp_path / "local")}))
    dask_recipe = base.with_overrides(
        {
            "run_root": str(tmp_path / "dask"),
            "execution.task_runner": "dask",
            "execution.n_workers": 2,
            "execution.shard_chunks": 2,
        }
    )
    since = dt.datetime.now(dt.timezone.utc)
    sharded = _features(dask_recipe)
    shards = _shard_runs(since)
    flows, tasks = run_names(since)
    assert "feature shards on Dask" in flows and "feature shard train chunks 0-2" in tasks, (flows, tasks)
    assert not unreadable(flows) and not unreadable(tasks), (unreadable(flows), unreadable(tasks))
    n_chunks = -(-local.meta["n_train"] // 4) + -(-local.meta["n_val"] // 4)
    assert len(shards) >= n_chunks // 2 and set(shards) == {"Completed"}, shards  # one task per 2 chunks
    assert sharded.identity == local.identity and sharded.digest == local.digest  # execution is not identity
    a, b = store_arrays(local.path / FEATURES_STORE), store_arrays(sharded.path / FEATURES_STORE)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _cli_run(run_root: Path, prefect_home: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PREFECT_HOME": str(prefect_home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-m", "flows.cli", "run", "--recipe", str(RECIPE), "--set", f"run_root={run_root}"]
    cmd += ["--set", "selection.methods=[random]", "--set", "evaluation.benchmarks={mmlu: 2}", *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_runs_started_together_on_one_run_root_build_each_artifact_once(tmp_path):

    root = tmp_path / "runs"
    procs = [_cli_run(root, tmp_path / "prefect") for _ in range(2)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n\n".join(o[-3000:] for o in outs)
    builds = [json.loads(x) for x in (root / "artifacts" / "builds.jsonl").read_text().splitlines()]
    ids = [b["identity"] for b in builds]
    assert len(ids) == len(set(ids)), "an artifact was built twice"
    assert len({b["pid"] for b in builds}) >= 1 and {"data", "warmup", "features", "influence"} <= {
        b["kind"] for b in builds
    }
    records = [json.loads(p.read_text()) for p in (root / "run-records").glob("*.json")]
    assert len(records) == 2
    strip = lambda refs: json.dumps(refs, sort_keys=True)  # noqa: E731
    assert strip(records[0]["refs"]) == strip(records[1]["refs"])  # both runs point at the same artifacts


KILLED_PIPELINE = """
import os, signal, sys
from bidsml.config import load_recipe
import tasks.influence as ti
from flows.pipeline import pipeline

ti.BLOCK_ROWS = 8
recipe = load_recipe(sys.argv[1]).with_overrides({"run_root": sys.argv[2], "selection.methods": ["random", "bids"],
                                                  "evaluation.benchmarks": {"mmlu": 2}})
real, calls = ti.influence_block, []
def killing(*args, **kwargs):
    calls.append(1)
    if len(calls) > 2:
        os.kill(os.getpid(), signal.SIGKILL)  # the whole pipeline, hard, in its third influence block
    return real(*args, **kwargs)
ti.influence_block = killing
pipeline(recipe)
"""


def test_pipeline_sigkilled_during_influence_resumes_at_the_first_unfinished_block(
    tmp_path, prefect_harness, monkeypatch
):
    from prefect.settings import get_current_settings

    import tasks.influence as ti
    from flows.pipeline import pipeline
    from storage.influence_store import BLOCKS_DONE_DIR, read_influence_matrix

    root = tmp_path / "runs"
    env = {**os.environ, "PREFECT_API_URL": str(get_current_settings().api.url)}
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_PIPELINE, str(RECIPE), str(root)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == -9, proc.stderr[-3000:]
    partial = [p for p in (root / "artifacts" / "influence").iterdir() if p.name.endswith(".partial")]
    assert len(partial) == 1
    markers = {p.name: p.stat().st_mtime_ns for p in (partial[0] / BLOCKS_DONE_DIR).iterdir()}
    assert sorted(markers) == ["block-000000", "block-000001"]

    monkeypatch.setattr(ti, "BLOCK_ROWS", 8)
    real, calls = ti.influence_block, []
    monkeypatch.setattr(ti, "influence_block", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    recipe = load_recipe(RECIPE).with_overrides(
        {"run_root": str(root), "selection.methods": ["random", "bids"], "evaluation.benchmarks": {"mmlu": 2}}
    )
    out = pipeline(recipe)
    rec = json.loads(Path(out["record"]).read_text())
    infl = Path(rec["refs"]["influence"]["main"]["uri"])
    n = rec["refs"]["influence"]["main"]["meta"]["n_train"]
    assert len(calls) == -(-n // 8) - 2  # finished blocks were not recomputed
    for name, mtime in markers.items():
        assert (infl / BLOCKS_DONE_DIR / name).stat().st_mtime_ns == mtime
    resumed = read_influence_matrix(infl)
    digest = rec["refs"]["influence"]["main"]["digest"]
    calls.clear()
    fresh = pipeline(recipe, refresh=["influence"])  # an uninterrupted computation from scratch
    assert len(calls) == -(-n // 8)
    rec2 = json.loads(Path(fresh["record"]).read_text())
    np.testing.assert_array_equal(read_influence_matrix(Path(rec2["refs"]["influence"]["main"]["uri"])), resumed)
    assert rec2["refs"]["influence"]["main"]["digest"] == digest  # identical store, file for file


def test_a_dask_worker_sigkilled_mid_shard_has_its_shard_rerun_and_the_store_is_identical(tmp_path, prefect_harness):
    import signal
    import threading
    import time

    from distributed import Client, LocalCluster

    from storage.names import CHUNKS_DONE_DIR

    base = load_recipe(RECIPE).with_overrides(
        {"features.chunk_rows": 2, "features.max_tokens": 64, "features.threads": 1}
    )
    local = _features(base.with_overrides({"run_root": str(tmp_path / "local")}))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        client = Client(cluster)
        pids_before = set(client.run(os.getpid).values())
        recipe = base.with_overrides(
            {
                "run_root": str(tmp_path / "dask"),
                "execution.task_runner": "dask",
                "execution.address": cluster.scheduler_address,
                "execution.shard_chunks": 6,
            }
        )
        from flows.step_flows import STEP_FLOWS as F

        data = F["data"](recipe)
        warm = F["warmup"](recipe, inputs={"data": data})
        result = {}
        run = threading.Thread(
            target=lambda: result.update(
                ref=F["features"](
                    recipe,
                    inputs={
                        "data": data,
                        "warmup": warm,
                        "projection": F["projection"](recipe, inputs={"data": data, "warmup": warm}),
                    },
                )
            )
        )
        run.start()
        markers = Path(local.path.parents[2].parent / "dask" / "artifacts" / "features")
        deadline = time.time() + 300
        while time.time() < deadline and not any(markers.glob(f"*.partial/{CHUNKS_DONE_DIR}/*")):
            time.sleep(0.05)  # shards are running: the first chunk of some shard is written
        victim = sorted(pids_before)[0]
        os.kill(victim, signal.SIGKILL)  # a worker process dies in the middle of its shard
        run.join(timeout=600)
        pids_after = set(client.run(os.getpid).values())
        client.close()
    assert "ref" in result, "the featurize flow did not finish"
    assert victim not in pids_after  # the worker really died (its nanny started a new one)
    sharded = result["ref"]
    a, b = store_arrays(local.path / FEATURES_STORE), store_arrays(sharded.path / FEATURES_STORE)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert sharded.digest == local.digest
