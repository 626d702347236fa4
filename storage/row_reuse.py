"""Per-row reuse for pools that grow: rows featurized before, in the same feature space, are copied, not recomputed.

A row's gradient features depend on its content (the messages, tokenized), the warmup checkpoints, the projector
(kind, k, seed), the model and the feature settings, and nothing else of the pool; its influence row depends on
those features and on the validation features. So:

- every features artifact stores, per split, a 64-bit digest of each row's content (`row_digests_<split>.npy`)
  and in its summary the digest of its *feature space* (`row_space`: everything above but the pool);
- a features build looks, on its run root, for published features artifacts of the same space and takes the rows
  whose content they hold (`RowSources`: which source and which row); only the others are computed;
- an influence build whose validation features are one source's own (bit for bit) copies that source's influence
  rows for the training rows the features took from it.

What is reused is named in the artifact's identity (the sources' identities): the content of a rebuilt row may
differ from a from-scratch one by what batching alone changes, so an artifact says which rows it took from where.
A rerun finds the artifact it built before (same space and pool: the same sources), so reuse never defeats the
cache.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROW_DIGESTS = "row_digests_{split}.npy"  # beside the gradient store: (N,) uint64, one per row of the split
ROW_SOURCES = "row_sources.npz"  # which rows were copied from where (the influence step reads it)
MAX_SOURCES = 4  # a build takes rows from at most this many earlier artifacts (greedy: most rows first)


def row_digests(examples) -> np.ndarray:
    """Returns (N,) uint64: the first 8 bytes of the sha256 of each row's messages (what its features read)."""
    out = np.empty(len(examples), dtype=np.uint64)
    for i, e in enumerate(examples):
        msgs = [{"role": m.role, "content": m.content} for m in e.messages]
        out[i] = int.from_bytes(hashlib.sha256(json.dumps(msgs, sort_keys=True).encode()).digest()[:8], "little")
    return out


def save_row_digests(work: Path, split: str, digests: np.ndarray) -> None:
    np.save(Path(work) / ROW_DIGESTS.format(split=split), digests.astype(np.uint64))


def load_row_digests(root: Path, split: str) -> np.ndarray | None:
    path = Path(root) / ROW_DIGESTS.format(split=split)
    return np.load(path) if path.exists() else None


def published(run_root: Path, kind: str) -> list[tuple[Path, dict]]:
    """Returns (folder, meta) of every published artifact of a kind under a run root, by identity."""
    out = []
    for meta in sorted((Path(run_root) / "artifacts" / kind).glob("*/meta.json")):
        if not meta.parent.name.endswith(".partial"):
            out.append((meta.parent, json.loads(meta.read_text())))
    return out


@dataclass
class RowSources:
    """Which rows of a build come from which earlier artifact: per split, (our row, source number, its row)."""

    identities: list[str] = field(default_factory=list)  # the source artifacts, by identity
    paths: list[str] = field(default_factory=list)
    rows: dict[str, np.ndarray] = field(default_factory=dict)
    source: dict[str, np.ndarray] = field(default_factory=dict)
    source_rows: dict[str, np.ndarray] = field(default_factory=dict)

    def count(self, split: str | None = None) -> int:
        return sum(len(v) for s, v in self.rows.items() if split is None or s == split)

    def lookup(self, split: str) -> dict[int, tuple[int, int]]:
        """Returns {our row: (source number, source row)} of a split."""
        if split not in self.rows:
            return {}
        return {
            int(r): (int(s), int(q)) for r, s, q in zip(self.rows[split], self.source[split], self.source_rows[split])
        }

    def by_row(self, split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Returns (n,) arrays: each row's source number and that source's row (-1 for a row computed here)."""
        src, row = np.full(n, -1, dtype=np.int64), np.full(n, -1, dtype=np.int64)
        if split in self.rows:
            src[self.rows[split]], row[self.rows[split]] = self.source[split], self.source_rows[split]
        return src, row

    def taken_whole(self, split: str, n: int) -> int | None:
        """Returns the source number whose rows 0..n-1 are this split's rows 0..n-1 in order, else None."""
        if split not in self.rows or len(self.rows[split]) != n or n == 0:
            return None
        s = self.source[split]
        if (
            (s == s[0]).all()
            and (self.rows[split] == np.arange(n)).all()
            and (self.source_rows[split] == np.arange(n)).all()
        ):
            return int(s[0])
        return None

    def summary(self) -> dict:
        return {
            "sources": self.identities,
            "rows": {s: len(v) for s, v in self.rows.items()},
            "by_source": {
                ident: {s: int((self.source[s] == k).sum()) for s in self.rows}
                for k, ident in enumerate(self.identities)
            },
        }


def find_row_sources(
    run_root: Path, kind: str, space: str, digests: dict[str, np.ndarray], exclude_pool: str | None
) -> RowSources:
    """Returns where this build's rows can be copied from: published `kind` artifacts of the same `space`
    (summary `row_space`) that hold rows with the same content digests.

    An artifact of the same space and the same pool (`exclude_pool`, the data input's digest) is this build done
    before: its own sources are returned, so its identity (and the cache) holds. Otherwise sources are taken
    greedily, the artifact holding the most still-missing rows first, at most MAX_SOURCES, ties by identity.
    """
    cands = [(p, m) for p, m in published(run_root, kind) if m.get("summary", {}).get("row_space") == space]
    for path, meta in cands:  # this build done before, with reuse (one built with `reuse: false` copied nothing)
        before = meta["summary"].get("reused_from", {}).get("sources", [])
        if exclude_pool is not None and meta["inputs"]["inputs"].get("data") == exclude_pool and before:
            cands = [(p, m) for p, m in cands if m["identity"] in before]
            cands.sort(key=lambda pm: before.index(pm[1]["identity"]))
            return _assign(cands, digests, greedy=False)
    cands = [(p, m) for p, m in cands if exclude_pool is None or m["inputs"]["inputs"].get("data") != exclude_pool]
    return _assign(cands, digests, greedy=True)


def _assign(cands: list[tuple[Path, dict]], digests: dict[str, np.ndarray], greedy: bool) -> RowSources:
    """Returns the rows each candidate supplies, candidates taken in order (greedy: most missing rows first)."""
    match = []  # per candidate, per split: its row holding each of our rows' content, else -1
    for path, _ in cands:
        per = {}
        for split, ours in digests.items():
            theirs = load_row_digests(path, split)
            per[split] = _match(ours, theirs) if theirs is not None else np.full(len(ours), -1, dtype=np.int64)
        match.append(per)
    missing = {s: np.ones(len(d), dtype=bool) for s, d in digests.items()}
    parts: dict[str, list[tuple[np.ndarray, int, np.ndarray]]] = {s: [] for s in digests}
    chosen: list[int] = []
    order = list(range(len(cands)))
    while order and len(chosen) < MAX_SOURCES:
        gains = [sum(int(((match[c][s] >= 0) & missing[s]).sum()) for s in digests) for c in order]
        best = max(range(len(order)), key=lambda j: (gains[j], -j)) if greedy else 0
        c, gain = order.pop(best), gains[best]
        if gain == 0:
            if greedy:
                break
            continue
        for s in digests:
            take = np.flatnonzero((match[c][s] >= 0) & missing[s])
            parts[s].append((take, len(chosen), match[c][s][take]))
            missing[s][take] = False
        chosen.append(c)
    out = RowSources(identities=[cands[c][1]["identity"] for c in chosen], paths=[str(cands[c][0]) for c in chosen])
    for s, ps in parts.items():
        if not ps or not sum(len(t) for t, _, _ in ps):
            continue
        rows = np.concatenate([t for t, _, _ in ps])
        order_ = np.argsort(rows, kind="stable")
        out.rows[s] = rows[order_].astype(np.int64)
        out.source[s] = np.concatenate([np.full(len(t), k) for t, k, _ in ps])[order_].astype(np.int64)
        out.source_rows[s] = np.concatenate([q for _, _, q in ps])[order_].astype(np.int64)
    return out


def _match(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """Returns, per digest of `ours`, the first row of `theirs` with it, else -1."""
    if len(theirs) == 0:
        return np.full(len(ours), -1, dtype=np.int64)
    u, first = np.unique(theirs, return_index=True)
    pos = np.minimum(np.searchsorted(u, ours), len(u) - 1)
    return np.where(u[pos] == ours, first[pos], -1).astype(np.int64)


def save_row_sources(work: Path, src: RowSources) -> None:
    """Writes the copy map of a build beside its store (empty when nothing was copied)."""
    arrays = {"identities": np.array(src.identities, dtype=str)}
    for split in src.rows:
        arrays |= {f"{split}_rows": src.rows[split], f"{split}_source": src.source[split]}
        arrays[f"{split}_source_rows"] = src.source_rows[split]
    np.savez(Path(work) / ROW_SOURCES, **arrays)


def load_row_sources(root: Path) -> RowSources:
    """Returns the copy map of a features artifact (empty for one built before reuse existed)."""
    path = Path(root) / ROW_SOURCES
    if not path.exists():
        return RowSources()
    z = np.load(path)
    out = RowSources(identities=[str(i) for i in z["identities"]])
    for key in z.files:
        if key.endswith("_source_rows"):
            split = key.removesuffix("_source_rows")
            out.rows[split], out.source[split] = z[f"{split}_rows"], z[f"{split}_source"]
            out.source_rows[split] = z[key]
    return out
