"""Adding a step is adding one file: a declaration and its build, nothing else.

A copy of the project gets `tasks/source_counts.py` (once per run) and
`tasks/subset_sources.py` (once per method x budget branch, `per="branch"`);
the pipeline runs them, `bidsflow step` runs them, `bidsflow steps` lists
them, their deployments and UI forms exist, `bidsflow deployments --write`
puts them in deployments/prefect.yaml and `prefect deploy` reads them from
it, with no other file touched.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).parents[1]

TOY_STEP = '''"""Step `source_counts`: the pool's examples per source."""

import json

from tasks.step import Build, Input, Step
from storage.datasets import load_split


def build(b: Build) -> dict:
    """Counts the pool's examples per source into counts.json."""
    counts: dict[str, int] = {}
    for example in load_split(b.inputs["data"], "train"):
        counts[example.source] = counts.get(example.source, 0) + 1
    (b.work / "counts.json").write_text(json.dumps(counts, sort_keys=True))
    b.log(f"{sum(counts.values())} examples from {len(counts)} sources")
    return {"n_pool": sum(counts.values()), "per_source": counts}


STEP = Step(
    name="source_counts",
    doc="Counts the pool's examples per source.",
    inputs=(Input("data"),),
    build=build,
)
'''

BRANCH_STEP = '''"""Step `subset_sources`: one branch's selected rows per source."""

import json

from tasks.step import Build, Input, Step
from storage.selections import selected_by, subset_path


def build(b: Build) -> dict:
    """Counts the selected rows per source into counts.json."""
    counts: dict[str, int] = {}
    for line in subset_path(b.inputs["selection"].path).read_text().splitlines():
        source = json.loads(line)["source"]
        counts[source] = counts.get(source, 0) + 1
    (b.work / "counts.json").write_text(json.dumps(counts, sort_keys=True))
    return {"n_selected": sum(counts.values()), **selected_by(b.inputs["selection"]).model_dump()}


def label(inputs, params) -> str:
    return selected_by(inputs["selection"]).label


STEP = Step(
    name="subset_sources",
    doc="Counts one selection's rows per source.",
    inputs=(Input("selection", labelled=True),),
    label=label,
    per="branch",
    build=build,
)
'''

FORM = (
    "import json; from flows.step_flows import DEPLOYED; from flows.serve import deployments; "
    "from prefect.utilities.callables import parameter_schema; "
    "form = parameter_schema(DEPLOYED['source_counts'].fn).model_dump(); "
    "names = [d.name for d in deployments('recipes/tiny.yaml')]; "
    "print(json.dumps({'form': form, 'deployments': names, 'flow': DEPLOYED['source_counts'].name}))"
)


@pytest.fixture()
def project_with_a_new_step(tmp_path):
    copy = tmp_path / "project"
    for item in ("bidsml", "storage", "tasks", "flows", "deployments", "recipes"):
        shutil.copytree(ROOT / item, copy / item, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "tasks" / "source_counts.py").write_text(TOY_STEP)
    (copy / "tasks" / "subset_sources.py").write_text(BRANCH_STEP)
    return copy


def _run(copy: Path, tmp_path: Path, *args: str, rc: int = 0) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(copy),  # the copy's packages, not the installed project's
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }
    env.pop("PREFECT_API_URL", None)
    out = subprocess.run([sys.executable, *args], cwd=copy, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == rc, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def test_a_new_step_file_runs_in_the_pipeline_the_cli_and_the_deployments(project_with_a_new_step, tmp_path):
    copy, runs = project_with_a_new_step, tmp_path / "runs"
    small = ["--set", f"run_root={runs}", "--set", "selection.methods=[random]"]
    small += ["--set", "evaluation.benchmarks={mmlu: 2}"]
    # the pipeline: the new step runs after the step it reads, and the run record keeps its artifact
    ran = _run(copy, tmp_path, "-m", "flows.cli", "run", "--recipe", "recipes/tiny.yaml", *small)
    # not a terminal (a CI log): plain lines, no bar drawn (no carriage return, no cursor escape), progress as lines
    printed = ran.stdout + ran.stderr
    assert "\r" not in printed and "\x1b[A" not in printed and "it/s]" not in printed, printed[-2000:]
    assert "training steps: " in printed and "(100%)" in printed, printed[-2000:]
    record = json.loads(next((runs / "run-records").glob("*.json")).read_text())
    toy = record["refs"]["source_counts"]["main"]
    data = record["refs"]["data"]["main"]
    counts = json.loads((Path(toy["uri"]) / "counts.json").read_text())
    assert sum(counts.values()) == data["meta"]["pool_out"] == toy["meta"]["n_pool"] and len(counts) > 1
    report = Path(record["report"]).read_text()
    assert "source_counts" in report  # the report's step table
    # the per-branch step: once per method x budget, on that branch's selection, under the branch's label
    (label,) = record["refs"]["selection"]
    per_branch = record["refs"]["subset_sources"]
    assert set(per_branch) == {label}, per_branch
    picked = json.loads((Path(per_branch[label]["uri"]) / "counts.json").read_text())
    k = record["refs"]["selection"][label]["meta"]["k"]
    assert sum(picked.values()) == k == per_branch[label]["meta"]["n_selected"] and k > 0
    assert f"subset_sources:{label}" in report
    # `bidsflow step`: the same artifacts, from the cache
    out = _run(copy, tmp_path, "-m", "flows.cli", "step", "source_counts", "--recipe", "recipes/tiny.yaml", *small)
    ref = json.loads(out.stdout[out.stdout.index("{") :])
    assert ref["kind"] == "source_counts" and ref["digest"] == toy["digest"]
    out = _run(
        copy, tmp_path, "-m", "flows.cli", "step", "subset_sources", "--label", label, "--recipe", "recipes/tiny.yaml",
        *small,
    )
    ref = json.loads(out.stdout[out.stdout.index("{") :])
    assert ref["digest"] == per_branch[label]["digest"]
    steps = _run(copy, tmp_path, "-m", "flows.cli", "steps").stdout
    assert "source_counts" in steps and "subset_sources" in steps
    # the deployment and its UI form: the recipe (inline or a file), the run to read from, refresh
    shown = json.loads(_run(copy, tmp_path, "-c", FORM).stdout.strip().splitlines()[-1])
    assert shown["flow"] == "step-source_counts" and "step-source_counts" in shown["deployments"]
    props = shown["form"]["properties"]
    assert set(props) == {"recipe", "recipe_path", "from_run", "refresh"}, props
    assert all(p.get("description") for p in props.values()), props
    # deployments/prefect.yaml: stale until rewritten from the declarations; then `prefect deploy` reads both steps
    stale = _run(copy, tmp_path, "-m", "flows.cli", "deployments", rc=1)
    assert "stale" in stale.stdout and "bidsflow deployments --write" in stale.stdout
    _run(copy, tmp_path, "-m", "flows.cli", "deployments", "--write")
    spec = (copy / "deployments" / "prefect.yaml").read_text()
    assert "name: step-source_counts" in spec and "name: step-subset_sources" in spec
    assert "entrypoint: flows/step_flows.py:subset_sources_step" in spec
    _run(copy, tmp_path, "-m", "prefect", "work-pool", "create", "bids-cpu", "--type", "process")
    deploy = _run(
        copy, tmp_path, "-m", "prefect", "--no-prompt", "deploy", "--name", "step-subset_sources",
        "--prefect-file", "deployments/prefect.yaml",
    )  # on the temporary server Prefect starts per command, over this test's PREFECT_HOME database
    said = " ".join(deploy.stdout.split())
    assert "Deployment 'step-subset_sources/step-subset_sources' successfully created" in said, said[-3000:]
