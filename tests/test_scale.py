"""Scale-out: sharded featurization on a Dask LocalCluster equals one process; safe concurrent builds."""

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
import zarr

from bidsml.config import load_recipe
from storage.names import FEATURES_STORE

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).parents[1]
RECIPE = ROOT / "recipes" / "tiny.yaml"


def _store_arrays(path: Path) -> dict[str, np.ndarray]:
    root = zarr.open_group(str(path), mode="r")
    return {
        f"{split}/{ckpt}/{name}": root[split][ckpt][name][:]
        for split in root.group_keys()
        for ckpt in root[split].group_keys()
        for name in root[split][ckpt].array_keys()
    }


def _features(recipe):
    from flows.steps import data_flow, features_flow, warmup_flow

    data = data_flow(recipe)
    warm = warmup_flow(recipe, data)
    return features_flow(recipe, data, warm)


def _shard_runs(since) -> list[str]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(limit=200)
    return [r.state.name for r in runs if r.task_key.startswith("featurize_shard") and r.created >= since]


def test_dask_shards_build_the_same_store_as_one_process(tmp_path, prefect_harness):
    base = load_recipe(RECIPE).with_overrides({"features.chunk_rows": 4})
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
    n_chunks = -(-local.meta["n_train"] // 4) + -(-local.meta["n_val"] // 4)
    assert len(shards) >= n_chunks // 2 and set(shards) == {"Completed"}, shards  # one task per 2 chunks
    assert sharded.identity == local.identity and sharded.digest == local.digest  # execution is not identity
    a, b = _store_arrays(local.path / FEATURES_STORE), _store_arrays(sharded.path / FEATURES_STORE)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
