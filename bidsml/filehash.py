"""Content hashes of large files (model weights), computed once per file version."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def file_digest_cached(path: Path, cache_file: Path) -> str:
    """Returns the sha256 of `path`, reusing the value cached in `cache_file` for its (path, size, mtime).

    A file replaced in place gets a new mtime (or size), so its digest is
    recomputed; an unchanged file is hashed once.
    """
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    cache: dict[str, str] = {}
    if cache_file.exists():
        try:
            cache = json.loads(cache_file.read_text())
        except json.JSONDecodeError:  # a torn write by a killed process: recompute
            cache = {}
    if key in cache:
        return cache[key]
    with path.open("rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    cache = {k: v for k, v in cache.items() if not k.startswith(f"{path}|")} | {key: digest}
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_name(cache_file.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(cache, indent=0, sort_keys=True))
    os.replace(tmp, cache_file)
    return digest
