"""Layers: bidsml/ and storage/ never import Prefect or upper layers; steps never import Prefect, flows/ or each
other; no cycles."""

import ast
from pathlib import Path

from storage.identity import SHARED_STEP_MODULES, function_closure

ROOT = Path(__file__).parents[1]
PACKAGES = ("bidsml", "storage", "tasks", "flows", "deployments", "bench")


def _imports(path: Path) -> set[str]:
    """Returns the dotted modules a file imports (top level and inside functions)."""
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    files = {_module(f): f for pkg in PACKAGES for f in (ROOT / pkg).rglob("*.py")}
    return {m: {i for i in _imports(f) if i in files and i != m} for m, f in files.items()}


def test_bidsml_and_storage_do_not_import_prefect_or_upper_layers():
    for pkg, forbidden in (
        ("bidsml", {"prefect", "tasks", "flows", "storage"}),
        ("storage", {"prefect", "tasks", "flows"}),
        ("tasks", {"prefect", "flows", "dask"}),
        ("flows", {"deployments", "bench"}),  # the house's top: nothing above it
        ("deployments", {"bench"}),
        ("bench", {"deployments"}),
    ):
        files = list((ROOT / pkg).rglob("*.py"))
        assert len(files) >= 3, pkg
        for f in files:
            bad = {i.split(".")[0] for i in _imports(f)} & forbidden
            assert not bad, f"{f.relative_to(ROOT)} imports {sorted(bad)}"


def test_steps_do_not_import_each_other():
    graph = _graph()
    # the declaration types, the registry and the code steps share (counted in their identities)
    shared = {"tasks", "tasks.step", "tasks.registry", *SHARED_STEP_MODULES}
    for mod, deps in graph.items():
        if mod.startswith("tasks.") and mod not in shared:
            others = {d for d in deps if d.startswith("tasks") and d not in shared}
            assert not others, f"{mod} imports {sorted(others)}: shared code belongs in storage/, bidsml/ or a SHARED_STEP_MODULES module"


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(d) :] + [d]))
            if d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_a_step_identity_covers_every_module_it_runs_and_nothing_people_only_look_at():
    closure = set(function_closure("tasks.features", "build", "precision"))
    # the core code the build calls and what that imports
    assert {"bidsml.gradients.features", "bidsml.gradients.projection", "bidsml.model", "bidsml.model_sources"} <= closure
    assert "storage.gradients" in closure and "bidsml.gradients.checkpoints" in closure
    # importing a registry package covers every registered module (they are found by scanning the package)
    evaluation = set(function_closure("tasks.evaluation", "build", "benchmark_inputs"))
    assert {
        "bidsml.evaluation.benchmarks.mmlu",
        "bidsml.evaluation.benchmarks.jsonl",
        "bidsml.evaluation.scoring",
    } <= evaluation
    # progress, logs, UI cards, the run report and the evaluation's aggregation are outside every identity
    for mods in (closure, evaluation):
        assert not any(m.startswith(("flows", "tasks")) for m in mods), mods
        assert not {"bidsml.report.run", "bidsml.report.markdown", "bidsml.evaluation.aggregate"} & mods, mods


def test_the_training_shared_by_steps_counts_in_their_identities():
    """finetune, tune and probe train through tasks/adapters.py: its code (and what it runs) is theirs."""
    for step in ("finetune", "tune", "probe"):
        closure = set(function_closure(f"tasks.{step}", "build"))
        assert {"tasks.adapters", "bidsml.training.lora", "bidsml.training.trunk", "storage.train_trunk"} <= closure, step


def test_storage_stores_it_loads_no_model():
    """storage/ reads and writes files; computing with a model (loading one) is bidsml's and tasks' work."""
    loaders = ("load_base_model", "load_lora", "load_tokenizer", "from_pretrained")
    for path in sorted((ROOT / "storage").glob("*.py")):
        text = path.read_text()
        assert not [w for w in loaders if w in text], f"{path.name} loads a model: move that to bidsml/ or tasks/"


def test_bidsml_is_in_rooms():
    """bidsml/ groups its code by idea (data, training, gradients, influence, evaluation, selectors, pruning,
    report): at most a dozen modules directly in it, and every room a package that says what it holds."""
    flat = sorted(p.name for p in (ROOT / "bidsml").glob("*.py") if p.name != "__init__.py")
    assert len(flat) <= 12, flat
    for room in [p for p in (ROOT / "bidsml").iterdir() if p.is_dir() and p.name != "__pycache__"]:
        init = room / "__init__.py"
        assert init.is_file() and ast.get_docstring(ast.parse(init.read_text())), f"{room.name}/ has no docstring"
