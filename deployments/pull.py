"""The pull step of `deployments/prefect.yaml`: a flow run starts in the project's root.

`prefect worker start` runs each flow run in a fresh process; this step
makes the project root its working directory, so entrypoints
(`flows/pipeline.py:pipeline`) and recipe files (`recipes/demo.yaml`)
resolve. `BIDSFLOW_REPO` overrides the folder (e.g. a checkout on shared
storage); unset, it is the root of the installed project.
"""

from __future__ import annotations

import os
from pathlib import Path

from bidsml.errors import RecipeError
from storage.identity import PROJECT_ROOT


def set_project_root() -> dict:
    """Changes the working directory to $BIDSFLOW_REPO or the project root; returns {"directory": it}."""
    folder = Path(os.environ.get("BIDSFLOW_REPO") or PROJECT_ROOT).expanduser().resolve()
    if not (folder / "flows" / "pipeline.py").is_file():
        raise RecipeError(
            f"BIDSFLOW_REPO = {str(folder)!r} holds no bidsflow project (no flows/pipeline.py): set it to the "
            "repository's folder on this worker, or unset it to use the installed project"
        )
    os.chdir(folder)
    return {"directory": str(folder)}
