"""What a team with Prefect workers does, command by command (docs/cluster.md, "Deployments with Prefect workers").

A fresh server (`bidsflow ui`), two process work pools, `prefect deploy --all`
from `deployments/prefect.yaml` unedited, a `prefect worker start` per pool
(separate processes), then a run of the pipeline deployment and of one
`step-*` deployment: each must complete on its own pool. The nightly cron
must have put a scheduled run on the pipeline, with nothing to fill in, and
a run given a recipe file that does not exist must fail at once naming it.
Every process the test starts is stopped.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import free_port, start_process, stop_process, wait_for

pytestmark = pytest.mark.e2e

REPO = Path(__file__).parents[1]
BIN = Path(sys.executable).parent


def _prefect(env: dict, *args: str, timeout: float = 180) -> str:
    out = subprocess.run(
        [str(BIN / "prefect"), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, f"prefect {' '.join(args)}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def _run(env: dict, deployment: str, params: dict) -> str:
    args = ["deployment", "run", deployment]
    for k, v in params.items():
        args += ["--param", f"{k}={json.dumps(v)}"]
    found = re.search(r"UUID: ([0-9a-f-]{36})", _prefect(env, *args))
    assert found
    return found.group(1)


def _final(api: str, run_id: str) -> dict | None:
    run = httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()
    kind = (run.get("state") or {}).get("type")
    return run if kind in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None


def test_prefect_deploy_all_with_a_worker_per_pool(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    api = f"{url}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_API_URL": api,
        "PREFECT_WORKER_QUERY_SECONDS": "2",  # workers poll every 2 s, not 10: each run starts sooner
    }
    env.pop("BIDSFLOW_REPO", None)  # unset: the pull step uses the project root
    logs = {n: tmp_path / f"{n}.log" for n in ("ui", "worker-cpu", "worker-gpu")}
    procs = []
    try:
        procs.append(start_process([str(BIN / "bidsflow"), "ui", "--port", str(port)], env, logs["ui"], REPO))

        def healthy():
            try:
                return httpx.get(f"{api}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, 180, "the server", list(logs.values()))
        # docs/cluster.md's commands, in order
        _prefect(env, "work-pool", "create", "bids-cpu", "--type", "process")
        _prefect(env, "work-pool", "create", "bids-gpu", "--type", "process")
        _prefect(env, "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml", timeout=300)
        workers = tmp_path / "worker-cwd"  # a worker's own folder: the pull step must move runs to the project
        workers.mkdir()
        for pool in ("cpu", "gpu"):
            procs.append(
                start_process(
                    [str(BIN / "prefect"), "worker", "start", "-p", f"bids-{pool}"],
                    env,
                    logs[f"worker-{pool}"],
                    workers,
                )
            )

        spec = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
        pools = {d["name"]: d["work_pool"]["name"] for d in spec["deployments"]}
        deps = httpx.post(f"{api}/deployments/filter", json={"limit": 50}, timeout=10).json()
        assert {d["name"] for d in deps} == set(pools)
        pipe = next(d for d in deps if d["name"] == "bids-pipeline")
        assert pipe["parameters"] == {"recipe_path": "recipes/demo.yaml"}  # a real default, no null

        # the nightly cron put a scheduled run on the pipeline, with nothing left to fill in
        def scheduled():
            body = {
                "deployments": {"id": {"any_": [pipe["id"]]}},
                "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
            }
            return httpx.post(f"{api}/flow_runs/filter", json=body, timeout=10).json()

        upcoming = wait_for(scheduled, 120, "the nightly run to be scheduled", list(logs.values()))
        assert upcoming[0]["parameters"].get("recipe_path", "recipes/demo.yaml") == "recipes/demo.yaml"
        assert upcoming[0]["expected_start_time"][11:16] == "02:00", upcoming[0]["expected_start_time"]

        recipe = yaml.safe_load((REPO / "recipes" / "tiny.yaml").read_text())
        recipe |= {"run_root": str(tmp_path / "runs")}
        recipe["selection"] = {"methods": ["random"], "budgets": [8]}
        recipe["evaluation"]["benchmarks"] = {"mmlu": 2, "gsm8k": 1}
        pipe_run = _run(env, "bids-pipeline/bids-pipeline", {"recipe": recipe})
        done = wait_for(lambda: _final(api, pipe_run), 900, "the pipeline run", list(logs.values()))
        assert done["state"]["type"] == "COMPLETED", done["state"]
        assert done["work_pool_name"] == pools["bids-pipeline"] == "bids-gpu"
        assert list((tmp_path / "runs" / "run-records").glob("*.json"))

        step_run = _run(env, "step-selection/step-selection", {"recipe": recipe, "method": "random", "budget": 6})
        done = wait_for(lambda: _final(api, step_run), 300, "the step-selection run", list(logs.values()))
        assert done["state"]["type"] == "COMPLETED", done["state"]
        assert done["work_pool_name"] == pools["step-selection"] == "bids-cpu"

        # a recipe file that does not exist: the run fails at once, naming the field and the file
        bad = _run(env, "step-data/step-data", {"recipe_path": "recipes/no-such-recipe.yaml"})
        done = wait_for(lambda: _final(api, bad), 300, "the bad run", list(logs.values()))
        assert done["state"]["type"] == "FAILED", done["state"]
        message = done["state"]["message"]
        assert "recipe_path" in message and "no-such-recipe.yaml" in message, message
    finally:
        for p in reversed(procs):
            stop_process(p)
