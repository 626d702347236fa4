"""Against a real Prefect server: `bidsflow ui`, `bidsflow serve`, `prefect deployment run`, the REST API.

Starts the server on 127.0.0.1 (fresh database), serves the deployments,
runs the pipeline on the tiny model, then the `select` deployment with
another budget, and checks through the REST API that both completed, that
the upstream steps of the second were cached, that the artifacts exist, and
that `bidsflow lineage` walks from the new subset to its checkpoints.
Every process it starts is stopped.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from flows.serve import deployments
from tests.conftest import start_process, stop_process, wait_for

pytestmark = pytest.mark.e2e  # slow end-to-end: skip with -m "not e2e"

REPO = Path(__file__).parents[1]
RECIPE = REPO / "recipes" / "tiny.yaml"
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    return start_process(cmd, env, log, REPO)


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


def _every(api: str, what: str) -> list[dict]:
    """Returns every flow run / task run / artifact (`what`: flow_runs, task_runs, artifacts) of the server, paging
    200 at a time in a fixed order (one unsorted page of 200 once dropped this test's runs)."""
    sort = {"flow_runs": "EXPECTED_START_TIME_DESC", "task_runs": "EXPECTED_START_TIME_DESC", "artifacts": "ID_DESC"}
    out: list[dict] = []
    for offset in itertools.count(0, 200):
        page = httpx.post(
            f"{api}/{what}/filter", json={"limit": 200, "offset": offset, "sort": sort[what]}, timeout=10
        ).json()
        out += page
        if len(page) < 200:
            return out
    raise AssertionError("unreachable")


def _task_runs(api: str, flow_run_ids: set[str]) -> dict[str, list[str]]:
    """Returns {step: [state names]} of the step tasks (flows/runner.py) under the given flow runs and subflows."""
    runs = _every(api, "flow_runs")
    parents = {r["id"]: r.get("parent_task_run_id") for r in runs}
    tasks = _every(api, "task_runs")
    by_id = {t["id"]: t for t in tasks}

    def root_flow(flow_run_id):
        while parents.get(flow_run_id):
            flow_run_id = by_id[parents[flow_run_id]]["flow_run_id"]
        return flow_run_id

    out: dict[str, list[str]] = {}
    for t in sorted(tasks, key=lambda t: t["created"]):
        if root_flow(t["flow_run_id"]) in flow_run_ids and t["task_key"].startswith("_materialize"):
            out.setdefault(t["name"].split(" ")[0], []).append(t["state"]["name"])  # `<step> <label>`
    return out


CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # this machine's network is closed: no update or sync traffic
    "--disable-component-update",
    "--disable-sync",
]


NO_BROWSER = "no Chromium on this machine (CI installs Debian's `chromium`): the browser checks did not run"


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _child_run(api: str, parent_run: str, name_prefix: str) -> str:
    """Returns the id of the subflow run of `parent_run` whose name starts with `name_prefix`."""
    runs = _every(api, "flow_runs")
    tasks = {t["id"]: t for t in _every(api, "task_runs")}
    for r in runs:
        parent_task = tasks.get(r.get("parent_task_run_id") or "")
        if r["name"].startswith(name_prefix) and parent_task and parent_task["flow_run_id"] == parent_run:
            return r["id"]
    raise AssertionError(f"no subflow run {name_prefix!r} of {parent_run}")


def _browser_checks(base: str, api: str, pipeline_run: str, select_run: str, shots: Path) -> str:
    """Loads the flow-run and artifact pages in headless Chromium and asserts what a person would see there.

    Screenshots of every page go to `shots` (kept on failure: pytest's tmp_path).
    """
    from playwright import sync_api  # a dev dependency: installed with the project's tests

    browser_path = _chromium()
    if browser_path is None:
        if os.environ.get("CI"):
            pytest.fail("no Chromium on this CI machine: .ci/run installs Debian's `chromium` for the browser checks")
        return NO_BROWSER  # the other checks go on; the test reports the browser checks as skipped at its end
    shots.mkdir(parents=True, exist_ok=True)

    def latest(key: str) -> str:
        found = httpx.post(
            f"{api}/artifacts/filter",
            json={"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 1},
            timeout=10,
        ).json()
        assert found, key
        return found[0]["id"]

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        try:
            # the pipeline's run page: subflows named by what they do, the method x budget branches in one
            page.goto(f"{base}/runs/flow-run/{pipeline_run}")
            page.get_by_text("Subflow Runs").first.click()
            page.get_by_text("method x budget branches on this process").first.wait_for(timeout=30_000)
            text = page.inner_text("body")
            page.screenshot(path=str(shots / "pipeline-run.png"))
            for name in ("evaluation base", "features", "diagnostics"):
                assert name in text, name
            # the branches' run page: each branch's selection, fine-tune and evaluation
            page.goto(f"{base}/runs/flow-run/{_child_run(api, pipeline_run, 'method x budget branches')}")
            page.get_by_text("Subflow Runs").first.click()
            page.get_by_text("selection bids@8").first.wait_for(timeout=30_000)
            text = page.inner_text("body")
            page.screenshot(path=str(shots / "branches-run.png"))
            for name in ("finetune random@8", "selection random@8", "evaluation bids@8"):
                assert name in text, name
            # the select run's page: its upstream came from the cache, and says so
            page.goto(f"{base}/runs/flow-run/{select_run}")
            page.get_by_text("Subflow Runs").first.click()
            page.get_by_text("features · cached").first.wait_for(timeout=30_000)
            page.screenshot(path=str(shots / "select-run.png"))
            # the artifacts page: one card per key
            page.goto(f"{base}/artifacts")
            page.get_by_placeholder("Search artifacts").wait_for(timeout=60_000)  # the page is up; keys: below
            page.screenshot(path=str(shots / "artifacts.png"), full_page=True)
            # the page lists the most recent keys first and loads more on scrolling, so a key is looked up with the
            # page's own search box (as a person would), never by hoping it is among the first cards
            search = page.get_by_placeholder("Search artifacts")
            for key in (
                "tiny-pipeline-report",
                "tiny-select-bids-6-report",
                "finetune-bids-6-summary",
                "finetune-bids-8-summary",
                "evaluation-bids-6",
                "tiny-pipeline-lineage",
            ):
                search.fill(key)
                page.get_by_text(key, exact=True).first.wait_for(timeout=30_000)
                settled = time.time() + 20  # the filtered list settles (its search is debounced: it may redraw)
                while True:
                    page.wait_for_timeout(1_000)
                    lines = [ln.strip() for ln in page.inner_text("body").splitlines()]
                    if lines.count(key) == 1 or time.time() > settled:
                        break
                page.screenshot(path=str(shots / f"artifacts-search-{key}.png"))
                assert lines.count(key) == 1, (key, lines.count(key))  # one card per key, however many versions
            search.fill("")
            # the reports' images and the lineage image load
            for key, n_images in (("tiny-pipeline-report", 3), ("tiny-select-bids-6-lineage", 1)):
                page.goto(f"{base}/artifacts/artifact/{latest(key)}")
                page.locator("img[src^='data:image/png']").first.wait_for(timeout=30_000)
                widths = page.evaluate(
                    "Promise.all(Array.from(document.images).filter(i => i.src.startsWith('data:image/png'))"
                    ".map(i => i.decode().then(() => i.naturalWidth)))"
                )
                page.screenshot(path=str(shots / f"{key}.png"), full_page=True)
                assert len(widths) >= n_images and all(w > 0 for w in widths), (key, widths)
        finally:
            browser.close()
    return "ran"


@pytest.mark.timeout(900)
def test_ui_serve_deployment_runs_cached_select_and_lineage(tmp_path):
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe["run_root"] = str(tmp_path / "runs")
    recipe["selection"]["methods"] = ["random", "bids"]  # two branches (rds adds a step, not a check)
    recipe_path = tmp_path / "tiny.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe))
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),  # a fresh database
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
        "PREFECT_UI_ENABLED": "true",  # the browser checks load the real UI
    }
    logs = [tmp_path / "ui.log", tmp_path / "serve.log"]
    procs = []
    timings = {}
    try:
        t = time.time()
        procs.append(_start([str(BIN / "bidsflow"), "ui", "--port", str(port)], env, logs[0]))
        wait_for(lambda: "Prefect UI" in logs[0].read_text(), 180, "the server", logs)
        timings["server_start_s"] = time.time() - t
        assert f"http://127.0.0.1:{port}" in logs[0].read_text()

        procs.append(
            _start([str(BIN / "bidsflow"), "serve", "--recipe", str(recipe_path), "--no-schedule"], env, logs[1])
        )

        expected = {d.name for d in deployments(str(recipe_path), with_schedule=False)}

        def served():  # serve registers them one by one: wait for all of them, not for a count
            deps = httpx.post(f"{api}/deployments/filter", json={}, timeout=10).json()
            names = {d["name"] for d in deps}
            return expected <= names and names

        names = wait_for(served, 180, "the deployments", logs)
        assert {"bids-pipeline", "select", "step-selection", "step-features"} <= names

        t = time.time()
        first = _deployment_run(env, "bids-pipeline/bids-pipeline", {})
        assert wait_for(lambda: _flow_run_state(api, first), 600, "the pipeline run", logs) == "COMPLETED"
        timings["pipeline_run_s"] = time.time() - t

        t = time.time()
        second = _deployment_run(env, "select-finetune-evaluate/select", {"method": "bids", "budget": 6})
        assert wait_for(lambda: _flow_run_state(api, second), 600, "the select run", logs) == "COMPLETED"
        timings["select_run_s"] = time.time() - t

        states = _task_runs(api, {second})
        for name in ("data", "warmup", "features", "influence", "diagnostics"):
            assert states[name] == ["Cached"], (name, states)
        assert states["selection"] == ["Completed"] and states["finetune"] == ["Completed"], states
        assert sorted(states["evaluation"]) == ["Cached", "Completed"], states  # base model cached, new adapter not

        arts = httpx.post(
            f"{api}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [second]}}}, timeout=10
        ).json()
        keys = {a["key"] for a in arts}
        # the select run's report, tables and lineage are its own, not the pipeline's
        select_keys = {f"tiny-select-bids-6-{k}" for k in ("report", "lineage", "evaluation", "composition")}
        assert select_keys <= keys, keys
        report = next(a for a in arts if a["key"] == "tiny-select-bids-6-report")["data"]
        assert "data:image/png;base64," in report  # plots are inline: the UI shows them
        assert "| cached |" in report and "| computed |" in report  # which steps came from the cache
        lineage_md = next(a for a in arts if a["key"] == "tiny-select-bids-6-lineage")["data"]
        assert "```mermaid" in lineage_md and "features" in lineage_md and "data:image/png;base64," in lineage_md
        all_arts = _every(api, "artifacts")
        all_keys = {a["key"] for a in all_arts}
        per_thing = {"selection-bids-6-summary", "selection-bids-8-summary", "finetune-bids-6-summary"}
        per_thing |= {
            "finetune-progress-bids-6",
            "evaluation-base-summary",
            "evaluation-bids-6",
            "tiny-pipeline-report",
        }
        assert {"features-summary", "warmup-summary", "features-progress", "warmup-progress"} | per_thing <= all_keys
        # rerun steps say so in their names: the select run's cached upstream subflows
        sub = {r["name"] for r in _every(api, "flow_runs")}
        assert {"data · cached", "features · cached", "evaluation base · cached", "selection bids@6"} <= sub, sub

        t = time.time()
        browser = _browser_checks(f"http://127.0.0.1:{port}", api, first, second, tmp_path / "screenshots")
        timings["browser_s"] = time.time() - t

        # lineage: from the new subset back to its checkpoints, projection and influence matrix
        rec = json.loads(next((tmp_path / "runs" / "run-records").glob(f"{second}.json")).read_text())
        sel = rec["refs"]["selection"]["bids@6"]
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
        assert '"proj_dim": "auto"' in out and "projection" in kinds  # the projection that produced it
        assert second in out  # the flow run that produced the selection

        # Prefect asset events: the selection was materialized from the influence matrix (for Prefect Cloud's graph)
        sel_key = "file://" + sel["uri"]
        page = httpx.post(
            f"{api}/events/filter", json={"filter": {"resource": {"id": [sel_key]}}, "limit": 50}, timeout=10
        ).json()
        sel_events = [e for e in page["events"] if e["event"].startswith("prefect.asset.materialization")]
        assert sel_events, page
        related = {r["prefect.resource.id"] for e in sel_events for r in e["related"]}
        assert "file://" + rec["refs"]["influence"]["main"]["uri"] in related, related
    finally:
        for p in reversed(procs):
            stop_process(p)
    assert all(p.poll() is not None for p in procs)
    print(json.dumps({k: round(v, 1) for k, v in timings.items()}))
    if browser == NO_BROWSER:  # every other check ran and passed; say what did not
        pytest.skip(NO_BROWSER)
