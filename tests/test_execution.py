"""Where steps run: GPU pinning per Dask worker, who computed each chunk, lora.layers checked before any step."""

import pytest

from bidsml.errors import ClusterError, RecipeError
from flows.execution import executor, gpu_index
from tasks.step import chunks_by_executor
from tests.conftest import TINY


def test_workers_of_one_host_each_get_their_own_gpu():
    # a LocalCluster (names 0..n-1) and `dask worker --nworkers 2 --name w` (names w-0, w-1)
    assert [gpu_index(n, ["1", "0", "2", "3"], 4, None) for n in "0123"] == [0, 1, 2, 3]
    assert [gpu_index(n, ["w-1", "w-0"], 2, None) for n in ("w-0", "w-1")] == [0, 1]
    # addresses as names (no --name): still distinct, ranked by name
    names = ["tcp://10.0.0.5:40001", "tcp://10.0.0.5:39999"]
    assert sorted(gpu_index(n, names, 2, None) for n in names) == [0, 1]
    assert gpu_index("w-0", ["w-0", "w-1"], 2, None) != gpu_index("w-1", ["w-0", "w-1"], 2, None)


def test_a_worker_started_with_its_own_gpu_uses_device_0():
    assert gpu_index("w-3", ["w-0", "w-1", "w-2", "w-3"], 1, "3") == 0


def test_more_workers_than_gpus_on_a_host_fail_with_the_fix():
    with pytest.raises(ClusterError, match=r"3 Dask workers on host .* share 2 GPU\(s\).*CUDA_VISIBLE_DEVICES=<i>"):
        gpu_index("w-2", ["w-0", "w-1", "w-2"], 2, None)


def test_executor_says_driver_outside_a_worker_and_counts_per_worker():
    me = executor()
    assert me["worker"] is None and me["pid"] > 0 and me["host"]
    records = [me, me, {**me, "worker": "w0"}, {**me, "worker": "w1"}, {**me, "worker": "w0"}]
    assert chunks_by_executor(records) == {"driver": 2, f"worker w0 ({me['host']})": 2, f"worker w1 ({me['host']})": 1}


def test_lora_layers_beyond_the_model_depth_fail_naming_the_key_and_depth():
    from bidsml.model import check_lora_layers

    check_lora_layers(TINY, (0, 1))  # the tiny model has 2 layers
    with pytest.raises(RecipeError, match=r"lora.layers = \[1, 2\]: the model has 2 decoder layers.*\[2\] is out"):
        check_lora_layers(TINY, (1, 2))


def test_cli_refuses_bad_lora_layers_before_any_step(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    out = CliRunner().invoke(
        app, ["run", "--recipe", "recipes/tiny.yaml", "--set", f"run_root={tmp_path}", "--set", "lora.layers=[0,5]"]
    )
    assert out.exit_code == 2, out.output
    assert "lora.layers" in out.output and "2 decoder layers" in out.output
    assert not (tmp_path / "artifacts").exists()  # nothing ran


def test_torch_threads_sets_the_count_for_the_block_and_restores_it():
    import torch

    from flows.execution import torch_threads

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before


@pytest.mark.e2e  # runs flows on a Prefect server
def test_a_step_flow_inside_a_run_leaves_the_heartbeat_to_its_parent_and_on_its_own_keeps_it(prefect_harness):
    from prefect import flow
    from prefect.settings import get_current_settings

    from flows.runner import StepFlow

    def frequency() -> int | None:  # what the flow engine reads when it starts a flow run's heartbeat thread
        return get_current_settings().flows.heartbeat_frequency

    step = StepFlow(frequency, name="probe-heartbeat")

    @flow(name="parent-of-a-step")
    def parent() -> tuple:
        return frequency(), step()

    default = frequency()
    assert default is not None  # Prefect's default: heartbeats on
    assert parent() == (default, None)  # the parent keeps its heartbeat; the step inside it sends none
    assert step() == default  # a step flow run on its own (`bidsflow step`) is a top-level flow: it keeps it
