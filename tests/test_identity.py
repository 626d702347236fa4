"""Artifact identity: code edits recompute what they shape, nothing else; fresh processes agree bit for bit."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.registry import STEPS as DECLARED

ROOT = Path(__file__).parents[1]
STEPS = sorted(DECLARED)  # every step of the project
DUMP = (
    "import json, sys; sys.path.insert(0, sys.argv[1]); from tasks.registry import step_identities; "
    "print(json.dumps(step_identities()))"
)


def _identities(tree: Path) -> dict[str, str]:
    out = subprocess.run([sys.executable, "-c", DUMP, str(tree)], capture_output=True, text=True, check=True)
    ids = json.loads(out.stdout)
    assert set(ids) == set(STEPS), ids
    return ids


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[str, str]:
    """The identities of an unedited copy of the code (identities depend on content only: one probe serves all)."""
    tree = tmp_path_factory.mktemp("pristine")
    for pkg in ("bidsml", "storage", "tasks", "flows"):
        shutil.copytree(ROOT / pkg, tree / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return _identities(tree)


@pytest.fixture()
def code_copy(tmp_path):
    for pkg in ("bidsml", "storage", "tasks", "flows"):
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))


def _changed(before: dict, after: dict) -> set[str]:
    return {s for s in STEPS if after[s] != before[s]}


def test_editing_a_build_function_recomputes_that_step_only(code_copy, pristine):
    before = _identities(code_copy)
    assert before == pristine  # stable across processes and folders
    # the composition rule of the selection step
    _edit(code_copy / "tasks" / "selection.py", "means.mean(axis=0).round(4)", "means.mean(axis=0).round(3)")
    assert _changed(before, _identities(code_copy)) == {"selection"}


def test_editing_core_code_recomputes_every_step_that_runs_it(code_copy, pristine):
    before = pristine
    _edit(
        code_copy / "bidsml" / "training" / "lora.py", "    torch.manual_seed(seed)\n", "    torch.manual_seed(seed + 1)\n"
    )  # add_lora
    # the steps that attach or train a LoRA change (and everything downstream of them, through their digests);
    # projection loads the warmup LoRA for the exact-influence comparison (diagnostics reads its measurement)
    assert _changed(before, _identities(code_copy)) == {
        "warmup",
        "projection",
        "features",
        "finetune",
        "probe",
        "tune",
    }


def test_comments_and_docstrings_do_not_change_identities(code_copy, pristine):
    before = pristine
    _edit(
        code_copy / "tasks" / "selection.py",
        '"""Runs one selection method;',
        '"""Runs one selection method (edited doc);',
    )
    _edit(code_copy / "bidsml" / "selection.py", "import numpy as np\n", "import numpy as np  # a comment\n\n")
    assert _identities(code_copy) == before


def test_progress_summaries_report_and_declarations_are_outside_every_identity(code_copy, pristine):
    """What people see of a step (progress, log and summary formats, the run report, the evaluation's aggregate
    table) and how a step is declared (its description, pool) change no artifact: editing them recomputes nothing."""
    before = pristine
    ui = code_copy / "flows" / "ui.py"
    _edit(ui, 'f"{self.description}: {int(done)}/{int(total)} ({pct:.0f}%){extra}"', 'f"{self.description} {pct:.1f}%"')
    _edit(ui, "rows.append((key, str(round_sig(v))))", "rows.append((key, repr(v)))")  # the summary card's table
    _edit(code_copy / "bidsml" / "report" / "run.py", "## Evaluation", "## Evaluation results")  # the run report's layout
    _edit(code_copy / "bidsml" / "evaluation" / "aggregate.py", '"worst-task"', '"worst task"')
    _edit(code_copy / "tasks" / "features.py", 'pool="gpu"', 'pool="cpu"')
    _edit(code_copy / "tasks" / "warmup.py", 'doc="Trains the warmup LoRA', 'doc="Trains a warmup LoRA')
    assert _identities(code_copy) == before
    # while the scoring the evaluation runs is inside its identity
    _edit(code_copy / "bidsml" / "evaluation" / "answers.py", '.replace(",", "")', '.replace(",", "").strip()')
    assert _changed(before, _identities(code_copy)) == {"evaluation", "probe"}


def _artifacts(run_root: Path) -> dict[tuple[str, str], dict[str, str]]:
    """Returns {(kind, identity): {file: sha256}} of every published artifact."""
    out = {}
    for meta_file in sorted(run_root.glob("artifacts/*/*/meta.json")):
        meta = json.loads(meta_file.read_text())
        manifest = json.loads((meta_file.parent / "manifest.json").read_text())
        out[(meta["kind"], meta["identity"])] = {k: v["sha256"] for k, v in manifest.items() if k != "meta.json"}
    return out


@pytest.mark.e2e
def test_two_fresh_processes_with_different_hash_seeds_build_identical_artifacts(tmp_path):
    procs = {}
    for seed in ("1", "2"):  # started together: two fresh processes, and half the wall time
        env = {
            **os.environ,
            "PYTHONHASHSEED": seed,
            "PREFECT_HOME": str(tmp_path / f"prefect{seed}"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
        }
        env.pop("PREFECT_API_URL", None)
        root = tmp_path / f"runs{seed}"
        # the custom-target recipe: a user's jsonl target and rds-plus, end to end
        cmd = [sys.executable, "-m", "flows.cli", "run", "--recipe", str(ROOT / "recipes" / "custom-target.yaml")]
        cmd += ["--set", f"run_root={root}", "--set", "evaluation.benchmarks={mmlu: 2, unit_conversion: 6}"]
        procs[seed] = (
            root,
            subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
        )
    runs = {}
    try:
        for seed, (root, proc) in procs.items():
            out = proc.communicate(timeout=900)[0]
            assert proc.returncode == 0, out[-6000:]
            runs[seed] = _artifacts(root)
    finally:
        for _, proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    a, b = runs["1"], runs["2"]
    kinds = {k for k, _ in a}
    assert {
        "data",
        "warmup",
        "features",
        "influence",
        "representations",
        "selection",
        "finetune",
        "evaluation",
    } <= kinds
    sel = [k for k in a if k[0] == "selection"]
    assert len(sel) == 3  # random, bids, rds-plus
    assert set(a) == set(b)  # the same identity for every step
    assert a == b  # and the same content, file by file


def test_adding_a_benchmark_file_leaves_the_expensive_steps_alone(code_copy, pristine):
    before = pristine
    (code_copy / "bidsml" / "evaluation" / "benchmarks" / "mybench.py").write_text(
        "from bidsml.evaluation.benchmarks.base import Benchmark, register_benchmark\n\n\n"
        "@register_benchmark\nclass Mine(Benchmark):\n    name = 'mine'\n"
    )
    # the data step, evaluation and the probes (which score the items) read benchmarks; warmup, features do not
    assert _changed(before, _identities(code_copy)) == {"data", "evaluation", "probe"}
