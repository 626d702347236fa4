"""Markdown with inline PNGs, for Prefect artifacts (the UI shows data URIs, not local paths)."""

from __future__ import annotations

import base64
import re
from pathlib import Path

MAX_INLINE_PNG = 2_000_000  # bytes; larger plots are linked by path only


def png_markdown(path: Path, alt: str) -> str:
    """Returns markdown showing a PNG inline (data URI, so the Prefect UI can display it) plus its path."""
    path = Path(path)
    data = path.read_bytes() if path.exists() else b""
    if not data or len(data) > MAX_INLINE_PNG:
        return f"{alt}: `{path}`"
    return f"![{alt}](data:image/png;base64,{base64.b64encode(data).decode()})\n\n`{path}`"


def inline_images(markdown: str, folder: Path) -> str:
    """Returns report markdown with its relative PNG links replaced by inline images (for a Prefect artifact)."""
    return re.sub(
        r"!\[([^\]]*)\]\(([^)/:]+\.png)\)", lambda m: png_markdown(Path(folder) / m.group(2), m.group(1)), markdown
    )
