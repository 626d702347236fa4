"""mkdocs hooks: the site shows the README as its home page, the changelog, and the result figures that live in
the repository's results/ folder (the pages link them as ../results/..., which also works on the forge)."""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
GENERATED = {"index.md": "README.md", "changelog.md": "CHANGELOG.md"}


def on_files(files, config):
    """Adds the README (home), the changelog and every results/ figure to the site's files."""
    for uri, source in GENERATED.items():
        files.append(File.generated(config, uri, content=(ROOT / source).read_text()))
    for png in sorted((ROOT / "results").glob("*.png")):
        files.append(File.generated(config, f"results/{png.name}", abs_src_path=str(png)))
    return files


def on_page_markdown(markdown, page, config, files):
    """Rewrites repository-relative links for the site: ../results/ and docs/ paths (README, changelog)."""
    markdown = markdown.replace("](../results/", "](results/")
    if page.file.src_uri in GENERATED:
        markdown = re.sub(r"\]\(docs/", "](", markdown)
        markdown = markdown.replace("](CHANGELOG.md)", "](changelog.md)")
    return markdown
