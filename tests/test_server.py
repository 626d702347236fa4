"""Against a real Prefect server: `bidsflow ui`, `bidsflow serve`, `prefect deployment run`, the REST API.

Starts the server on 127.0.0.1 (fresh database), serves the deployments,
runs the pipeline on the tiny model, then the `select` deployment with
another budget, and checks through the REST API that both completed, that
the upstream steps of the second were cached, that the artifacts exist, and
that `bidsflow lineage` walks from the new subset to its checkpoints.
Every process it starts is stopped.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

pytestmark = pytest.mark.e2e  # slow end-to-end: skip with -m "not e2e"

REPO = Path(__file__).parents[1]
RECIPE = REPO / "recipes" / "tiny.yaml"
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait(predicate, timeout: float, what: str, logs: list[Path]):
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = predicate()
        if out:
            return out
        time.sleep(1)
    tails = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs if p.exists())
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tails}")


def _flow_run_state(api: str, run_id: str) -> str | None:
    r = httpx.get(f"{api}/flow_runs/{run_id}", timeout=10)
    state = r.json().get("state") or {}
    return state.get("type") if state.get("type") in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None


def _deployment_run(env: dict, name: str, params: dict) -> str:
    args = [str(BIN / "prefect"), "deployment", "run", name]
    for k, v in params.items():
        args += ["--param", f"{k}={json.dumps(v)}"]
    out = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=True).stdout
    found = re.search(r"UUID: ([0-9a-f-]{36})", out) or re.search(r"([0-9a-f]{8}-[0-9a-f-]{27})", out)
    assert found, out
    return found.group(1)


def _task_runs(api: str, flow_run_ids: set[str]) -> dict[str, list[str]]:
    """Returns {task name: [state names]} of the task runs under the given flow runs and their subflows."""
    runs = httpx.post(f"{api}/flow_runs/filter", json={"limit": 200}, timeout=10).json()
    parents = {r["id"]: r.get("parent_task_run_id") for r in runs}
    tasks = httpx.post(f"{api}/task_runs/filter", json={"limit": 200}, timeout=10).json()
    by_id = {t["id"]: t for t in tasks}

    def root_flow(flow_run_id):
        while parents.get(flow_run_id):
            flow_run_id = by_id[parents[flow_run_id]]["flow_run_id"]
        return flow_run_id

    out: dict[str, list[str]] = {}
    for t in sorted(tasks, key=lambda t: t["created"]):
        if root_flow(t["flow_run_id"]) in flow_run_ids:
            out.setdefault(t["task_key"].rsplit("-", 1)[0], []).append(t["state"]["name"])
    return out


@pytest.mark.timeout(900)
def test_ui_serve_deployment_runs_cached_select_and_lineage(tmp_path):
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe["run_root"] = str(tmp_path / "runs")
    recipe_path = tmp_path / "tiny.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe))
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),  # a fresh database
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
        "PREFECT_UI_ENABLED": "false",  # the UI's static files are not needed for the API checks
    }
    logs = [tmp_path / "ui.log", tmp_path / "serve.log"]
    procs = []
    timings = {}
    try:
        t = time.time()
        procs.append(_start([str(BIN / "bidsflow"), "ui", "--port", str(port)], env, logs[0]))
        _wait(lambda: "Prefect UI" in logs[0].read_text(), 180, "the server", logs)
        timings["server_start_s"] = time.time() - t
        assert f"http://127.0.0.1:{port}" in logs[0].read_text()

        procs.append(
            _start([str(BIN / "bidsflow"), "serve", "--recipe", str(recipe_path), "--no-schedule"], env, logs[1])
        )

        def served():
            deps = httpx.post(f"{api}/deployments/filter", json={}, timeout=10).json()
            return len(deps) >= 11 and {d["name"] for d in deps}

        names = _wait(served, 180, "the deployments", logs)
        assert {"bids-pipeline", "select", "step-select", "step-features"} <= names

        t = time.time()
        first = _deployment_run(env, "bids-pipeline/bids-pipeline", {})
        assert _wait(lambda: _flow_run_state(api, first), 600, "the pipeline run", logs) == "COMPLETED"
        timings["pipeline_run_s"] = time.time() - t

        t = time.time()
        second = _deployment_run(env, "select-finetune-evaluate/select", {"method": "bids", "budget": 6})
        assert _wait(lambda: _flow_run_state(api, second), 600, "the select run", logs) == "COMPLETED"
        timings["select_run_s"] = time.time() - t

        states = _task_runs(api, {second})
        for name in ("prepare_data", "warmup", "featurize", "compute_influence", "diagnose"):
            assert states[name] == ["Cached"], (name, states)
        assert states["select_subset"] == ["Completed"] and states["finetune"] == ["Completed"], states
        assert sorted(states["evaluate"]) == ["Cached", "Completed"], states  # base model cached, new adapter not

        arts = httpx.post(
            f"{api}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [second]}}}, timeout=10
        ).json()
        keys = {a["key"] for a in arts}
        assert {"run-report", "lineage", "evaluation", "selection-composition"} <= keys, keys
        report = next(a for a in arts if a["key"] == "run-report")["data"]
        assert "data:image/png;base64," in report  # plots are inline: the UI shows them
        lineage_md = next(a for a in arts if a["key"] == "lineage")["data"]
        assert "```mermaid" in lineage_md and "featurize" in lineage_md
        all_arts = httpx.post(f"{api}/artifacts/filter", json={"limit": 200}, timeout=10).json()
        assert {"featurize-summary", "warmup-summary", "features-progress", "warmup-progress", "finetune-progress"} <= {
            a["key"] for a in all_arts
        }

        # lineage: from the new subset back to its checkpoints, projection and influence matrix
        rec = json.loads(next((tmp_path / "runs" / "run-records").glob(f"{second}.json")).read_text())
        sel = rec["refs"]["selections"]["bids@6"]
        out = subprocess.run(
            [str(BIN / "bidsflow"), "lineage", sel["digest"][:12], "--run-root", str(tmp_path / "runs")],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        kinds = re.findall(r"^(\w+) [0-9a-f]{16} by step", out, flags=re.M)
        assert kinds[0] == "selection" and {"influence", "features", "warmup", "data"} <= set(kinds), out
        assert '"method": "bids"' in out and '"budget": 6' in out
        assert '"proj_dim": 64' in out  # the projection that produced it
        assert second in out  # the flow run that produced the selection

        # Prefect asset events: the selection was materialized from the influence matrix (for Prefect Cloud's graph)
        sel_key = "file://" + sel["uri"]
        page = httpx.post(
            f"{api}/events/filter", json={"filter": {"resource": {"id": [sel_key]}}, "limit": 50}, timeout=10
        ).json()
        sel_events = [e for e in page["events"] if e["event"].startswith("prefect.asset.materialization")]
        assert sel_events, page
        related = {r["prefect.resource.id"] for e in sel_events for r in e["related"]}
        assert "file://" + rec["refs"]["influence"]["uri"] in related, related
    finally:
        for p in reversed(procs):
            _stop(p)
    assert all(p.poll() is not None for p in procs)
    print(json.dumps({k: round(v, 1) for k, v in timings.items()}))
