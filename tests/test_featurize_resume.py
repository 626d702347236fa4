"""The whole featurize step, SIGKILLed mid-run, resumes to the store an uninterrupted run writes."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bidsml.config import load_recipe
from storage.names import CHUNKS_DONE_DIR, FEATURES_STORE
from tests.conftest import store_arrays

RECIPE = Path(__file__).parents[1] / "recipes" / "tiny.yaml"
pytestmark = pytest.mark.e2e  # slow end-to-end: skip with -m "not e2e"

KILL_AFTER = 3  # compute calls (chunks of rows, all checkpoints each) before the SIGKILL

CHILD = """
import os, signal, sys
from bidsml.config import load_recipe
import tasks.features as tf
from flows.step_flows import STEP_FLOWS as F

# one thread: a matmul's last bits depend on the thread count and, on a loaded machine, its scheduling
recipe = load_recipe(sys.argv[1]).with_overrides(
    {"run_root": sys.argv[2], "features.chunk_rows": 4, "features.threads": 1}
)
real, calls = tf.compute_features_checkpoints, []
def killing(*args, **kwargs):
    calls.append(1)
    if len(calls) > int(sys.argv[3]):
        os.kill(os.getpid(), signal.SIGKILL)  # hard kill in the middle of the step
    return real(*args, **kwargs)
tf.compute_features_checkpoints = killing
data = F["data"](recipe)
warm = F["warmup"](recipe, inputs={"data": data})
F["features"](recipe, inputs={"data": data, "warmup": warm, "projection": F["projection"](recipe, inputs={"data": data, "warmup": warm})})
"""


def test_sigkilled_featurize_step_resumes_without_recomputing_finished_chunks(tmp_path, prefect_harness, monkeypatch):
    from prefect.settings import get_current_settings

    import tasks.features as tf
    from flows.step_flows import STEP_FLOWS as F

    run_root = tmp_path / "runs"
    env = {**os.environ, "PREFECT_API_URL": str(get_current_settings().api.url)}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(RECIPE), str(run_root), str(KILL_AFTER)],
        cwd=Path(__file__).parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == -9, proc.stderr[-3000:]  # SIGKILL
    partial = [p for p in (run_root / "artifacts" / "features").iterdir() if p.name.endswith(".partial")]
    assert len(partial) == 1
    markers = {p.name: p.stat().st_mtime_ns for p in (partial[0] / CHUNKS_DONE_DIR).iterdir()}
    # tiny recipe: 2 checkpoints; pool rows in chunks of 4, so 3 finished chunks = 6 markers
    assert len(markers) == 2 * KILL_AFTER, sorted(markers)

    recipe = load_recipe(RECIPE).with_overrides(
        {"run_root": str(run_root), "features.chunk_rows": 4, "features.threads": 1}
    )
    real, calls = tf.compute_features_checkpoints, []

    def counting(model, items, *args, **kwargs):
        calls.append(len(items))
        return real(model, items, *args, **kwargs)

    monkeypatch.setattr(tf, "compute_features_checkpoints", counting)
    data = F["data"](recipe)
    warm = F["warmup"](recipe, inputs={"data": data})
    feats = F["features"](
        recipe,
        inputs={
            "data": data,
            "warmup": warm,
            "projection": F["projection"](recipe, inputs={"data": data, "warmup": warm}),
        },
    )
    n_train, n_val = feats.meta["n_train"], feats.meta["n_val"]
    expected_chunks = -(-n_train // 4) + -(-n_val // 4)
    assert len(calls) == expected_chunks - KILL_AFTER  # finished chunks were not recomputed
    for name, mtime in markers.items():
        assert (feats.path / CHUNKS_DONE_DIR / name).stat().st_mtime_ns == mtime
    resumed = store_arrays(feats.path / FEATURES_STORE)

    calls.clear()
    fresh = F["features"](
        recipe,
        inputs={
            "data": data,
            "warmup": warm,
            "projection": F["projection"](recipe, inputs={"data": data, "warmup": warm}),
        },
        refresh=True,
    )  # an uninterrupted run from scratch
    assert len(calls) == expected_chunks
    clean = store_arrays(fresh.path / FEATURES_STORE)
    assert resumed.keys() == clean.keys() and len(clean) == 2 * 2 * 2  # 2 splits x 2 checkpoints x (features, norms)
    for key in clean:
        np.testing.assert_array_equal(resumed[key], clean[key], err_msg=key)
