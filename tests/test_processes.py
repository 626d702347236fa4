"""Nothing `bidsflow` starts outlives it: SIGTERM / SIGINT to `bidsflow ui` and `bidsflow run`, a busy port.

Each command is started as a user or a process manager starts it (its own
executable, a subprocess); its descendants are listed with psutil while it
runs, and after the signal every one of them must be gone and the port free.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).parents[1]
BIDSFLOW = str(Path(sys.executable).parent / "bidsflow")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp_path: Path) -> dict:
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    return env


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    return alive


def _kill_all(procs: list[psutil.Process]) -> None:
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_to_bidsflow_ui_stops_its_server(tmp_path, sig):
    port = _free_port()
    log = (tmp_path / "ui.log").open("w")
    ui = subprocess.Popen(
        [BIDSFLOW, "ui", "--port", str(port)], cwd=tmp_path, env=_env(tmp_path), stdout=log, stderr=subprocess.STDOUT
    )
    tree: list[psutil.Process] = []
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            pytest.fail(f"server never healthy:\n{(tmp_path / 'ui.log').read_text()[-3000:]}")
        tree = psutil.Process(ui.pid).children(recursive=True)
        assert any("prefect" in " ".join(p.cmdline()) for p in tree), "the server is a child of `bidsflow ui`"
        ui.send_signal(sig)
        rc = ui.wait(timeout=15)
        alive = _wait_gone(tree, timeout=15)
        assert not alive, f"left running after {sig.name}: {[(p.pid, p.cmdline()) for p in alive]}"
        deadline = time.time() + 15
        while not _port_free(port) and time.time() < deadline:
            time.sleep(0.2)
        assert _port_free(port), f"port {port} still held after {sig.name}"
        assert rc in (0, 128 + sig, 1), rc  # the server's own status
    finally:
        _kill_all(tree + [psutil.Process(ui.pid)] if ui.poll() is None else tree)


def test_bidsflow_ui_on_a_busy_port_fails_at_once_naming_the_port_and_holder(tmp_path):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        t = time.time()
        out = subprocess.run(
            [BIDSFLOW, "ui", "--port", str(port)],
            cwd=tmp_path,
            env=_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert out.returncode == 2, out.stdout + out.stderr
    text = " ".join((out.stdout + out.stderr).split())
    assert f"port {port}" in text and f"pid {os.getpid()}" in text, text
    assert "Traceback" not in text and time.time() - t < 30


def test_sigterm_to_bidsflow_run_stops_its_cluster_and_temporary_server(tmp_path):
    """`bidsflow run` with a LocalCluster: SIGTERM mid-run leaves no Dask worker and no Prefect server behind."""
    cmd = [
        BIDSFLOW,
        "run",
        "--recipe",
        str(REPO / "recipes" / "tiny.yaml"),
        "--set",
        f"run_root={tmp_path / 'runs'}",
        "--set",
        "execution.task_runner=dask",
        "--set",
        "execution.n_workers=1",
    ]
    log = (tmp_path / "run.log").open("w")
    run = subprocess.Popen(cmd, cwd=REPO, env=_env(tmp_path), stdout=log, stderr=subprocess.STDOUT)
    seen: dict[int, psutil.Process] = {}
    try:
        deadline = time.time() + 400
        # wait until both the temporary Prefect server and a Dask worker run under it
        while time.time() < deadline and run.poll() is None:
            for p in psutil.Process(run.pid).children(recursive=True):
                seen.setdefault(p.pid, p)
            lines = []
            for p in seen.values():
                try:
                    lines.append(" ".join(p.cmdline()))
                except psutil.Error:
                    pass
            if any("uvicorn" in c or "prefect" in c for c in lines) and any(
                "distributed" in c or "multiprocessing" in c for c in lines
            ):
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"never saw the server and a worker:\n{(tmp_path / 'run.log').read_text()[-3000:]}")
        for p in psutil.Process(run.pid).children(recursive=True):
            seen.setdefault(p.pid, p)
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=60)
        alive = _wait_gone(list(seen.values()), timeout=30)
        assert not alive, f"left running after SIGTERM: {[(p.pid, p.cmdline()) for p in alive]}"
    finally:
        if run.poll() is None:
            run.kill()
        _kill_all(list(seen.values()))


def test_ctrl_c_to_bidsflow_run_stops_a_fine_tune_running_in_a_worker_thread(tmp_path):
    """A fine-tune runs in a task-runner thread: Ctrl-C (SIGINT; SIGTERM takes the same path) stops it at its next
    training step, not when it ends.

    Before: Prefect's task runner waited for the running branch (fine-tune and
    evaluation) to finish before the run unwound: 219 s for this recipe.
    """
    runs = tmp_path / "runs"
    cmd = [BIDSFLOW, "run", "--recipe", str(REPO / "recipes" / "tiny.yaml"), "--set", f"run_root={runs}"]
    cmd += ["--set", "finetune.epochs=300"]  # ~3 min of training here: far longer than the allowed stop
    cmd += ["--set", "selection.methods=[random]", "--set", "evaluation.benchmarks={mmlu: 2}"]  # to it sooner
    log_path = tmp_path / "run.log"
    # as a terminal's foreground job: a shell's background job (CI under `cmd &`) inherits SIGINT ignored
    run = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=_env(tmp_path),
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.time() + 400
        while (
            time.time() < deadline
            and run.poll() is None
            and "finetune random@8 training steps" not in log_path.read_text()
        ):
            time.sleep(0.5)
        assert run.poll() is None, f"the run ended before its fine-tune:\n{log_path.read_text()[-3000:]}"
        time.sleep(2)  # a few optimizer steps in
        sent = time.time()
        run.send_signal(signal.SIGINT)
        run.wait(timeout=60)
        stopped_s = time.time() - sent
        log = log_path.read_text()
        assert stopped_s < 30, f"stopped {stopped_s:.0f} s after SIGINT"
        assert "Finished in state Crashed" in log and "Task run 'finetune random@8'" in log
        assert run.returncode != 0
        finetunes = runs / "artifacts" / "finetune"
        assert not list(finetunes.glob("*/manifest.json")), "an interrupted fine-tune was published"
        assert list(finetunes.glob("*.partial")), "the interrupted fine-tune's work folder (to resume from) is gone"
    finally:
        if run.poll() is None:
            run.kill()
