"""Shared fixtures: a tiny Llama with the real SmolLM2 tokenizer, no downloads."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bidsml.config import LoraConfig, ModelConfig
from bidsml.data.examples import Example
from tasks.registry import STEPS

# The longest test files first (their minutes on 2 cores, from `make test --durations`): `make test` runs
# `--dist loadfile --no-loadscope-reorder`, so the two workers take the files in this order and finish together
# (xdist's default order, most tests first, left the long files with few tests for the end). Order only: a file
# not named here runs after these, and nothing is skipped.
LONGEST_FIRST = (
    "test_cluster",  # 7.0 min
    "test_scale",  # 4.4
    "test_pipeline",  # 4.0
    "test_deploy_workers",  # 2.9
    "test_experiment",  # 2.4
    "test_identity",  # 2.3
    "test_add_a_step",  # 2.2
    "test_server",  # 1.9
    "test_processes",  # 1.9
    "test_grow_pool",  # 0.9
    "test_paser",  # 0.6
    "test_lm_eval",  # 0.6
    "test_streamed",  # 0.6
    "test_featurize_resume",  # 0.6
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: each file's own order is kept


TINY = ModelConfig(tiny=True, max_seq_length=64)
TINY_LORA = LoraConfig(r=4, alpha=8, dropout=0.0)


@pytest.fixture(scope="session")
def tokenizer():
    from bidsml.model import load_tokenizer

    return load_tokenizer(TINY)


def make_examples(n: int, source: str = "toy", task: str | None = None, seed: int = 0) -> list[Example]:
    """Returns n small, varied chat examples."""
    import random

    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "river", "stone", "cloud", "seven", "nine", "apple", "paper", "green"]
    out = []
    for i in range(n):
        q = " ".join(rng.choice(words) for _ in range(rng.randint(2, 12)))
        a = " ".join(rng.choice(words) for _ in range(rng.randint(1, 10)))
        extra = {"task": task, "capability": "knowledge"} if task else {}
        out.append(
            Example(
                id=f"{source}/{i}",
                source=source,
                messages=[{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                **extra,
            )
        )
    return out


@pytest.fixture()
def tmp_run_root(tmp_path):
    return tmp_path / "runs"


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server (SQLite) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield



STEP_TASKS = set(STEPS)  # the step tasks of flows/runner.py are named `<step> <label>`


def runs_since(since, kind: str) -> list:
    """Returns every flow or task run (`kind` "flow" / "task") created at or after `since`, newest first.

    Pages through the API sorted by expected start time (set when a run is created), so a session-wide
    server holding hundreds of earlier runs cannot push this test's runs past one page.
    """
    import itertools

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort, TaskRunSort

    out: list = []
    with get_client(sync_client=True) as client:
        read, sort = (
            (client.read_flow_runs, FlowRunSort.EXPECTED_START_TIME_DESC)
            if kind == "flow"
            else (client.read_task_runs, TaskRunSort.EXPECTED_START_TIME_DESC)
        )
        for offset in itertools.count(0, 200):
            page = read(limit=200, offset=offset, sort=sort)
            out += [r for r in page if r.created >= since]
            if len(page) < 200 or all(r.created < since for r in page):
                break
    return out


def task_run_states(since) -> dict[str, list[str]]:
    """Returns {step: [state names]} of the step tasks (flows/runner.py) started after `since`."""
    out: dict[str, list[str]] = {}
    for r in sorted(runs_since(since, "task"), key=lambda r: r.created):
        name = r.name.split(" ")[0]  # `<step> <label>`; task runs standing for subflows are keyed by the flow
        if r.task_key.startswith("_materialize") and name in STEP_TASKS:
            out.setdefault(name, []).append(r.state.name)
    return out


def store_arrays(path) -> dict:
    """Returns {"<split>/<ckpt>/<array>": values} of a Zarr gradient store (to compare two stores)."""
    import zarr

    root = zarr.open_group(str(path), mode="r")
    return {
        f"{split}/{ckpt}/{name}": root[split][ckpt][name][:]
        for split in root.group_keys()
        for ckpt in root[split].group_keys()
        for name in root[split][ckpt].array_keys()
    }


def adam_states(model, seed: int) -> dict:
    """Returns a seeded stand-in for a warmup checkpoint's Adam state (exp_avg, exp_avg_sq) of every LoRA linear."""
    import torch

    from bidsml.gradients.features import lora_linears

    g = torch.Generator().manual_seed(seed)
    return {
        n: {
            "exp_avg": torch.randn(m.weight.shape, generator=g) * 1e-3,
            "exp_avg_sq": torch.rand(m.weight.shape, generator=g) * 1e-6,
        }
        for n, m in lora_linears(model)
    }


def make_lora_model():
    """Returns the tiny model with a seeded LoRA whose B is non-zero (so A and B gradients are non-trivial)."""
    import torch

    from bidsml.model import load_base_model
    from bidsml.training.lora import add_lora

    model = add_lora(load_base_model(TINY), TINY_LORA, seed=0)
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)
    return model.eval()


def run_names(since) -> tuple[list[str], list[str]]:
    """Returns (flow run names, task run names) of runs created after `since`.

    The task runs Prefect creates to stand for subflow calls (the UI shows the flow run instead) are left out.
    """
    flows, tasks = runs_since(since, "flow"), runs_since(since, "task")
    parents = {r.parent_task_run_id for r in flows}
    return [r.name for r in flows], [r.name for r in tasks if r.id not in parents]


def unreadable(names: list[str]) -> list[str]:
    """Returns the names Prefect made up (a random `adjective-animal` slug, or `<task>-<hex>`): none should be."""
    import re

    def readable(name: str) -> bool:
        base = name.removesuffix(" · cached")
        return not re.fullmatch(r"[a-z]+-[a-z]+", base) and not re.search(r"-[0-9a-f]{3}$", base)

    return [n for n in names if not readable(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """`dask scheduler --port P` and `dask worker tcp://127.0.0.1:P --nworkers 1 --nthreads 1` processes.

    Started as docs/cluster.md starts them, as separate processes from `node`, a
    working directory holding folders named like the project's packages.
    """

    def __init__(self, node: Path, port: int | None = None):
        self.node, self.port = node, port or free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []
        for name in ("storage", "tasks", "bidsml"):  # decoys: folders named like the project's packages
            (node / name).mkdir(parents=True, exist_ok=True)

    def _start(self, args: list[str], log: str) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        dask = str(Path(sys.executable).parent / "dask")
        p = subprocess.Popen(
            [dask, *args],
            cwd=self.node,
            env=env,
            start_new_session=True,
            stdout=(self.node / log).open("a"),
            stderr=subprocess.STDOUT,
        )
        self.procs.append(p)
        return p

    def start_scheduler(self) -> subprocess.Popen:
        self.scheduler = self._start(["scheduler", "--port", str(self.port), "--no-dashboard"], "scheduler.log")
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self.scheduler
            except OSError:
                time.sleep(0.3)
        raise AssertionError(f"scheduler did not start:\n{(self.node / 'scheduler.log').read_text()[-2000:]}")

    def start_workers(self, n: int = 2) -> None:
        for i in range(n):
            self._start(
                ["worker", self.address, "--nworkers", "1", "--nthreads", "1", "--name", f"w{i}", "--no-dashboard"],
                f"worker{i}.log",
            )
        from distributed import Client

        with Client(self.address, timeout=60) as c:
            c.wait_for_workers(n, timeout=120)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        self.procs.clear()


def start_process(cmd: list[str], env: dict, log: Path, cwd: Path) -> subprocess.Popen:
    """Starts `cmd` in its own process group (so `stop_process` stops all it starts), output to `log`."""
    return subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )


def stop_process(proc: subprocess.Popen) -> None:
    """Stops a process group started by `start_process`: SIGTERM, then SIGKILL after 20 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_for(predicate, timeout: float, what: str, logs: list[Path]):
    """Returns `predicate()` once truthy (polled each second); on timeout fails with the tails of `logs`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = predicate()
        if out:
            return out
        time.sleep(1)
    tails = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs if p.exists())
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tails}")
