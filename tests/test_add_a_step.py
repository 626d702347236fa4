"""Adding a step is adding one file: a declaration and its build, nothing else.

A copy of the project gets `tasks/source_counts.py`; the pipeline runs it,
`bidsflow step` runs it, `bidsflow steps` lists it, and its deployment and
UI form exist, with no other file touched.
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
    return copy


def _run(copy: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(copy),  # the copy's packages, not the installed project's
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }
    env.pop("PREFECT_API_URL", None)
    out = subprocess.run([sys.executable, *args], cwd=copy, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def test_a_new_step_file_runs_in_the_pipeline_the_cli_and_the_deployments(project_with_a_new_step, tmp_path):
    copy, runs = project_with_a_new_step, tmp_path / "runs"
    small = ["--set", f"run_root={runs}", "--set", "selection.methods=[random]"]
    small += ["--set", "evaluation.benchmarks={mmlu: 2}"]
    # the pipeline: the new step runs after the step it reads, and the run record keeps its artifact
    _run(copy, tmp_path, "-m", "flows.cli", "run", "--recipe", "recipes/tiny.yaml", *small)
    record = json.loads(next((runs / "run-records").glob("*.json")).read_text())
    toy = record["refs"]["source_counts"]["main"]
    data = record["refs"]["data"]["main"]
    counts = json.loads((Path(toy["uri"]) / "counts.json").read_text())
    assert sum(counts.values()) == data["meta"]["pool_out"] == toy["meta"]["n_pool"] and len(counts) > 1
    assert "source_counts" in Path(record["report"]).read_text()  # the report's step table
    # `bidsflow step`: the same artifact, from the cache
    out = _run(copy, tmp_path, "-m", "flows.cli", "step", "source_counts", "--recipe", "recipes/tiny.yaml", *small)
    ref = json.loads(out.stdout[out.stdout.index("{") :])
    assert ref["kind"] == "source_counts" and ref["digest"] == toy["digest"]
    assert "source_counts" in _run(copy, tmp_path, "-m", "flows.cli", "steps").stdout
    # the deployment and its UI form: the recipe (inline or a file), the run to read from, refresh
    shown = json.loads(_run(copy, tmp_path, "-c", FORM).stdout.strip().splitlines()[-1])
    assert shown["flow"] == "step-source_counts" and "step-source_counts" in shown["deployments"]
    props = shown["form"]["properties"]
    assert set(props) == {"recipe", "recipe_path", "from_run", "refresh"}, props
    assert all(p.get("description") for p in props.values()), props
