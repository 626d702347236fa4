"""The documentation stays true: the mkdocs site builds with --strict (every link resolves), every repository path
the README and docs/ name in code spans exists, and the README stays a five-minute read."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOP = ("bidsml", "storage", "tasks", "flows", "deployments", "tests", "bench", "recipes", "results", "docs", "third_party")
PATH = re.compile(r"`((?:%s)/[A-Za-z0-9_./-]+)`" % "|".join(TOP))


def test_the_docs_site_builds_strictly(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "site" / "results" / "index.html").exists()
    assert (tmp_path / "site" / "results" / "evidence-cpu-retrieval.png").exists()  # figures from results/


def test_every_repository_path_the_docs_name_exists():
    missing = []
    for doc in [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]:
        if doc.name == "CHANGELOG.md":
            continue  # history: it names what was there then
        for m in PATH.finditer(doc.read_text()):
            path = m.group(1).rstrip(".,")
            if any(c in path for c in "<*{"):
                continue
            if not (ROOT / path).exists() and not list(ROOT.glob(path.split(":")[0])):
                missing.append(f"{doc.relative_to(ROOT)}: {path}")
    assert not missing, "\n".join(missing)


def test_the_readme_is_short_and_links_the_docs():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    for page in ("pipeline", "recipes", "selection", "evaluation", "validate", "cli", "ui", "cluster", "results"):
        assert f"(docs/{page}.md)" in text, page
