"""Markdown for Prefect artifacts: inline PNGs (the UI shows data URIs, not local paths), keys, rounding."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

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


def artifact_key(*parts: str | None) -> str:
    """Returns a Prefect artifact key from parts ('select', 'bids@0.1' -> 'select-bids-0-1'): [a-z0-9-] only."""
    text = "-".join(p for p in parts if p)
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]+", "-", text.lower())).strip("-")


def run_tag(recipe, label: str | None = None) -> str:
    """Returns what makes a step's UI artifacts unique: its label (method@budget, model) and, in repeats, the seed."""
    seed = f"seed {recipe.seed}" if recipe.data_seed is not None or recipe.seeds else None
    return " ".join(p for p in (label, seed) if p)


def round_sig(v: Any, digits: int = 4) -> Any:
    """Returns floats rounded to `digits` significant digits (other values unchanged)."""
    if isinstance(v, float) and v == v and v not in (float("inf"), float("-inf")) and v != 0:
        return float(f"{v:.{digits}g}")
    return v
