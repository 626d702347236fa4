"""Users' own pools: a JSONL file in the message format, or a Hugging Face dataset saved to disk."""

from __future__ import annotations

from bidsml.data.examples import read_hf_disk, read_jsonl
from bidsml.data.sources.base import register_source


@register_source("jsonl", needs_path=True)
def jsonl_pool(path: str):
    return read_jsonl(path)


@register_source("hf_disk", needs_path=True)
def hf_disk_pool(path: str):
    return read_hf_disk(path)
