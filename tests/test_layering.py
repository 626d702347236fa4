"""The ML package and storage never import Prefect (they run on a GPU box without it)."""

import ast
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_bidsml_and_storage_do_not_import_prefect_or_upper_layers():
    for pkg, forbidden in (
        ("bidsml", {"prefect", "tasks", "flows", "storage"}),
        ("storage", {"prefect", "tasks", "flows"}),
    ):
        files = list((ROOT / pkg).rglob("*.py"))
        assert files
        for f in files:
            bad = _imports(f) & forbidden
            assert not bad, f"{f.relative_to(ROOT)} imports {sorted(bad)}"
