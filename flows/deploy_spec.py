"""deployments/prefect.yaml, derived from the step declarations (`bidsflow deployments --write`).

The pipeline, select and validate deployments are fixed; one `step-<name>` deployment per declared step follows
(tasks/), on the work pool the step declares, in pipeline order. A test compares the committed file with
`render()`, so a new step file cannot leave the workers' deployments behind.
"""

from __future__ import annotations

from pathlib import Path

from tasks.registry import STEPS

PREFECT_YAML = Path(__file__).resolve().parent.parent / "deployments" / "prefect.yaml"

HEAD = """\
# For teams running Prefect workers, from the repository root:
#   prefect work-pool create bids-cpu --type process && prefect work-pool create bids-gpu --type process
#   prefect --no-prompt deploy --all --prefect-file deployments/prefect.yaml
#   prefect worker start -p bids-gpu     # on GPU machines; `-p bids-cpu` elsewhere
# Written by `bidsflow deployments --write` from the step declarations (tasks/<name>.py): do not edit by hand
# (tests/test_deployments.py fails when it is stale). Each step goes to the pool its declaration names
# (`pool=`): GPU steps to bids-gpu, the rest to bids-cpu.
# A run without a recipe runs the file `recipe_path` names (the nightly schedule: the demo recipe); the UI's run
# form takes a recipe inline or another recipe_path.
name: bidsflow
prefect-version: 3.9.1

definitions:
  pools:
    cpu: &cpu
      name: bids-cpu          # prefect work-pool create bids-cpu --type process
    gpu: &gpu
      name: bids-gpu          # a process pool on GPU machines: prefect worker start -p bids-gpu
  schedules:
    nightly: &nightly
      cron: "0 2 * * *"
      timezone: UTC

pull:
  # each flow run starts in the project root: $BIDSFLOW_REPO, or the installed project's folder when unset
  - deployments.pull.set_project_root: {}

deployments:
  - name: bids-pipeline
    entrypoint: flows/pipeline.py:pipeline
    work_pool: *gpu
    schedules: [*nightly]
    parameters:
      recipe_path: recipes/demo.yaml   # what the nightly run runs; the form takes a recipe inline instead
  - name: select                # one method at one budget on the cached upstream
    entrypoint: flows/pipeline.py:reselect
    work_pool: *gpu
    parameters:
      recipe_path: recipes/demo.yaml
      method: bids
      budget: 0.1
  - name: validate              # does influence work on the latest run's data? (bidsflow validate)
    entrypoint: flows/validate.py:validate
    work_pool: *gpu
    parameters:
      run: latest
"""


def render() -> str:
    """Returns the text of deployments/prefect.yaml for the steps declared now."""
    steps = "".join(
        f"  - name: step-{name}\n    entrypoint: flows/step_flows.py:{name}_step\n    work_pool: *{step.pool}\n"
        for name, step in STEPS.items()
    )
    return HEAD + steps


def write(path: Path = PREFECT_YAML) -> bool:
    """Writes the file when it differs; returns whether it changed."""
    text = render()
    if path.exists() and path.read_text() == text:
        return False
    path.write_text(text)
    return True
