"""Step `features`: per-example gradient features of pool (Adam) and validation (SGD), per checkpoint, in Zarr.

The pool is cut into shards of `execution.shard_chunks` Zarr chunks; `b.map`
submits them to the run's task runner (this process, or Dask workers), and
the build then writes any chunk a shard left undone (resume) and the example
metadata. Chunks already written are never recomputed.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bidsml.data.examples import tokenize_all
from bidsml.evaluation.model_calls import _causal_lm
from bidsml.evaluation.trunk import trunk_layer
from bidsml.gradients.features import CheckpointState, compute_features_checkpoints, lora_linears, resolve_precision
from bidsml.model import load_tokenizer, resolve_device, torch_threads
from bidsml.gradients.projection import ExactProjector, make_projector
from bidsml.training.trunk import TRUNK_CHECK_TOLERANCE, check_trunk
from tasks.step import Build, Input, Step, chunks_by_executor, executor
from bidsml.gradients.checkpoints import feature_model
from storage.checkpoints import load_checkpoints
from storage.datasets import SPLIT_FILES, load_split
from storage.gradients import (
    chunk_builders,
    create_groups,
    read_feature_rows_at,
    save_examples_meta,
    write_chunks_checkpoints,
)
from storage.names import CHUNK_BUILDERS_DIR
from storage.row_reuse import (
    RowSources,
    find_row_sources,
    published,
    row_digests,
    save_row_digests,
    save_row_sources,
)


def precision(recipe, inputs, params) -> dict:
    """Returns the forward precision resolved for the device (`auto` means different numbers on CPU and GPU) and,
    when rows are copied from earlier features artifacts (storage/row_reuse.py), those artifacts' identities."""
    out = {"precision": resolve_precision(recipe.features.precision, resolve_device(recipe.model))}
    sources = row_sources(recipe, inputs["data"], inputs["warmup"], inputs["projection"])
    if sources.identities:
        out["reuse"] = sources.identities
    return out


# what a row's features do not depend on (how rows are batched, who computes them), or only through the k the
# projection artifact gives (proj_dim: auto or a number, the same k either way)
NOT_IN_THE_SPACE = (
    *("chunk_rows", "threads", "reuse", "max_tokens"),
    *("proj_dim", "fidelity_rows", "min_fidelity", "max_store_gb"),
)


def feature_space(recipe, warm, proj) -> str:
    """Returns the digest of everything a row's features depend on except the pool: the warmup checkpoints, the
    projector (kind, k, seed), the model, the feature settings, the resolved precision and this step's code."""
    from storage.identity import function_identity, model_identity
    from storage.refs import stable_hash

    fc = recipe.features
    return stable_hash(
        {
            "warmup": warm.digest,
            "projector": proj.meta["projector"],
            "k": proj.meta["k"],
            "model": model_identity(recipe.model),
            "features": fc.model_dump(mode="json", exclude=set(NOT_IN_THE_SPACE)),
            "precision": resolve_precision(fc.precision, resolve_device(recipe.model)),
            "code": function_identity(__name__, "write_feature_chunks"),
        }
    )


def row_sources(recipe, data, warm, proj) -> RowSources:
    """Returns the rows of this pool (and validation set) that earlier features artifacts of the same space on
    this run root hold (none with `features.reuse: false`)."""
    if not recipe.features.reuse:
        return RowSources()
    run_root = Path(data.path).parents[2]  # <run root>/artifacts/data/<identity>
    space = feature_space(recipe, warm, proj)
    if not any(m.get("summary", {}).get("row_space") == space for _, m in published(run_root, "features")):
        return RowSources()  # nothing to look up (the pool is not read)
    digests = {split: row_digests(load_split(data, split)) for split in SPLIT_FILES}
    return find_row_sources(run_root, "features", space, digests, data.digest)


@dataclass
class FeatureContext:
    """What computing features needs, built once per process (a Dask worker keeps it across shards).

    The model, projector and checkpoint states load on first use (`loaded()`):
    a process that only finalises finished shards never loads the model.
    """

    recipe: object
    warm: object
    dim: int  # k, chosen by the projection step
    kind: str  # the projector: a registered one, or "exact"
    tok: object
    splits: dict[str, list]  # split -> examples (tokenized chunk by chunk, only where a chunk is computed)
    n_checkpoints: int
    reuse: RowSources = field(default_factory=RowSources)  # rows copied from earlier artifacts, not computed
    _copied: dict = field(default_factory=dict)
    model: object = None
    projector: object = None
    states: list[CheckpointState] | None = None
    precision: str = ""
    trunk_layer: int | None = None  # the first adapted layer: the states entering it are shared by all checkpoints
    trunk_note: str = ""

    def copied(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Returns per row of a split: the source it is copied from (-1: computed) and that source's row."""
        if split not in self._copied:
            self._copied[split] = self.reuse.by_row(split, len(self.splits[split]))
        return self._copied[split]

    def loaded(self) -> FeatureContext:
        if self.model is None:
            fc = self.recipe.features
            model, self.states, self.precision = feature_model(
                self.recipe.model, self.recipe.features, self.warm.path, load_checkpoints(self.warm)
            )
            shapes = {n: tuple(m.weight.shape) for n, m in lora_linears(model)}
            self.projector = (
                ExactProjector(shapes)
                if self.kind == "exact"
                else make_projector(self.kind, self.dim, fc.proj_seed, shapes)
            )
            self.trunk_layer, self.trunk_note = feature_trunk(model, self.tok, self.splits["val"], self.recipe)
            if self.projector.dim != self.dim:
                raise ValueError(
                    f"the projection artifact says k={self.dim}, the model's projector has {self.projector.dim}"
                )
            self.model = model
        return self


_CONTEXT: dict[str, FeatureContext] = {}  # at most one: {work folder: context}


def feature_trunk(model, tok, val, recipe) -> tuple[int | None, str]:
    """Returns (the layer whose input states every checkpoint shares, or None; what was decided and why).

    The model's lowest LoRA-adapted layer; checked on a few validation examples against a full pass.
    """
    inner_layers = len(_causal_lm(model).model.layers)
    layer = trunk_layer(model, inner_layers - 1)
    if layer is None:
        return None, "none: LoRA adapts layer 0"
    items, _ = tokenize_all(tok, val[:4], recipe.model.max_seq_length)
    diff = check_trunk(model, layer, items, tok.pad_token_id)
    if not diff <= TRUNK_CHECK_TOLERANCE:
        return None, f"not used: the top path's loss differs from a full pass by {diff:.2e} (full passes instead)"
    return layer, f"layers 0-{layer - 1} run once per micro-batch for all checkpoints (checked: |loss diff| {diff:.1e})"


def context(recipe, data, warm, proj, work: Path) -> FeatureContext:
    """Returns the feature context of this build, made on first use in this process and kept for its shards."""
    key = str(work)
    if key not in _CONTEXT:
        _CONTEXT.clear()
        tok = load_tokenizer(recipe.model)
        splits = {split: load_split(data, split) for split in SPLIT_FILES}
        dim, kind = proj.meta["k"], proj.meta["projector"]
        n_ckpt = len(load_checkpoints(warm))
        _CONTEXT[key] = FeatureContext(
            recipe, warm, dim, kind, tok, splits, n_ckpt, row_sources(recipe, data, warm, proj)
        )
    return _CONTEXT[key]


def _chunk_meta_path(work: Path, split: str, chunk: int) -> Path:
    return Path(work) / "chunk_meta" / f"{split}-{chunk:06d}.json"


def chunk_meta(ctx: FeatureContext, work: Path, split: str, chunk: int, items=None) -> dict:
    """Returns {"ids", "n_tokens"} of a chunk's rows: saved by whoever computed it, else by tokenizing them."""
    path = _chunk_meta_path(work, split, chunk)
    if path.exists():
        return json.loads(path.read_text())
    if items is None:
        rows = ctx.splits[split][chunk * ctx.recipe.features.chunk_rows : (chunk + 1) * ctx.recipe.features.chunk_rows]
        items, _ = tokenize_all(ctx.tok, rows, ctx.recipe.model.max_seq_length)
    meta = {"ids": [t.id for t in items], "n_tokens": [len(t.input_ids) for t in items]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta))
    tmp.replace(path)
    return meta


def write_feature_chunks(
    recipe, data, warm, proj, work: Path, split: str, chunks: range | None, threads: int | None = None
) -> int:
    """Computes and writes the unfinished chunks of `split` (all, or a shard's range); returns how many.

    `threads`: torch threads (features.threads, else execution.threads): the same count everywhere a chunk is
    computed, so a resumed chunk has the bits of an uninterrupted run.
    """
    fc = recipe.features
    ctx = context(recipe, data, warm, proj, work)
    rows = ctx.splits[split]

    def compute(start, stop, todo):
        with torch_threads(fc.threads if fc.threads is not None else threads):
            return _compute(start, stop, todo)

    def _compute(start, stop, todo):
        items, _ = tokenize_all(ctx.tok, rows[start:stop], recipe.model.max_seq_length)
        chunk_meta(ctx, work, split, start // fc.chunk_rows, items)  # before the chunk's markers
        out = {c: (np.zeros((stop - start, ctx.dim), np.float32), np.zeros(stop - start, np.float32)) for c in todo}
        copied = copy_reused_rows(ctx, split, start, stop, todo, out)
        new = [i for i in range(stop - start) if i not in copied]
        if new:
            ctx.loaded()
            # validation gradients are plain ("sgd"): no Adam transform
            run = [
                CheckpointState(ctx.states[c].weights, ctx.states[c].transform if split == "train" else None)
                for c in todo
            ]
            feats = compute_features_checkpoints(
                ctx.model,
                [items[i] for i in new],
                ctx.projector,
                ctx.tok.pad_token_id,
                run,
                fc.max_tokens,
                ctx.precision,
                ctx.trunk_layer,
            )
            for c, (f, n) in zip(todo, feats):
                out[c][0][new], out[c][1][new] = f.numpy(), n.numpy()
        return out

    return write_chunks_checkpoints(
        work,
        split,
        list(range(ctx.n_checkpoints)),
        len(rows),
        ctx.dim,
        fc.chunk_rows,
        compute,
        None,
        chunks,
        by=executor(),
    )


def copy_reused_rows(ctx: FeatureContext, split: str, start: int, stop: int, ckpts: list[int], out: dict) -> set[int]:
    """Fills `out[c]` (features, norms) at the rows of start..stop that an earlier artifact holds, copied as stored
    (fp16 features: the copy is bit for bit); returns those rows (relative to start)."""
    src, src_row = ctx.copied(split)
    src, src_row = src[start:stop], src_row[start:stop]
    for k, path in enumerate(ctx.reuse.paths):
        at = np.flatnonzero(src == k)
        if not len(at):
            continue
        for c in ckpts:
            f, n = read_feature_rows_at(Path(path), split, c, src_row[at])
            out[c][0][at], out[c][1][at] = f, n
    return set(np.flatnonzero(src >= 0).tolist())


def write_shard(recipe, data, warm, proj, work: Path, threads: int | None, split: str, first: int, end: int) -> int:
    """Computes one shard (chunks first..end-1 of a split) into the work folder; returns the chunks written."""
    return write_feature_chunks(recipe, data, warm, proj, work, split, range(first, end), threads)


def shard_name(recipe, data, warm, proj, work, threads, split: str, first: int, end: int) -> str:
    return f"feature shard {split} chunks {first}-{end}"


def _val_source(ctx: FeatureContext) -> str | None:
    k = ctx.reuse.taken_whole("val", len(ctx.splits["val"]))
    return ctx.reuse.identities[k] if k is not None else None


def build(b: Build) -> dict:
    """Computes projected, normalised gradient features, shard by shard on the task runner; resumes chunk by chunk."""
    recipe, data, warm, proj, work = b.recipe, b.inputs["data"], b.inputs["warmup"], b.inputs["projection"], b.work
    fc = recipe.features
    ctx = context(recipe, data, warm, proj, work)
    shards = []
    for split, items in ctx.splits.items():
        for c in range(ctx.n_checkpoints):
            create_groups(work, split, c, len(items), ctx.dim, fc.chunk_rows)
        n_chunks = -(-len(items) // fc.chunk_rows)
        step, threads = b.execution.shard_chunks, b.execution.threads
        # a shard only where rows are computed: chunks whose rows are all copied are filled below, in this process
        new = ctx.copied(split)[0] < 0
        computes = [bool(new[c * fc.chunk_rows : (c + 1) * fc.chunk_rows].any()) for c in range(n_chunks)]
        shards += [
            (recipe, data, warm, proj, work, threads, split, a, min(n_chunks, a + step))
            for a in range(0, n_chunks, step)
            if any(computes[a : a + step])
        ]
    b.map(write_shard, shards, name=shard_name, progress="feature shards")
    for split in ctx.splits:  # what a failed shard left undone (normally nothing): computed here
        write_feature_chunks(recipe, data, warm, proj, work, split, None, b.execution.threads)
    meta = {}
    for split, rows in ctx.splits.items():
        parts = [chunk_meta(ctx, work, split, i) for i in range(-(-len(rows) // fc.chunk_rows))]
        meta[split] = {"ids": sum((p["ids"] for p in parts), []), "n_tokens": sum((p["n_tokens"] for p in parts), [])}
    shutil.rmtree(work / "chunk_meta", ignore_errors=True)  # merged into examples.json
    save_examples_meta(work, meta)
    for split, rows in ctx.splits.items():
        save_row_digests(work, split, row_digests(rows))
    save_row_sources(work, ctx.reuse)
    reused = ctx.reuse.count()
    total = sum(len(r) for r in ctx.splits.values())
    b.log(
        f"rows reused: {reused} of {total}"
        + (f", from {', '.join(i[:12] for i in ctx.reuse.identities)}" if reused else "")
        + f"; computed: {total - reused}"
    )
    by = chunks_by_executor(chunk_builders(work))  # who computed what: meta.json only, not the content
    shutil.rmtree(work / CHUNK_BUILDERS_DIR, ignore_errors=True)
    b.log("feature chunks computed by: " + (", ".join(f"{k}: {v}" for k, v in by.items()) or "none (all resumed)"))
    if ctx.trunk_note:
        b.log(f"feature trunk: {ctx.trunk_note}", warning=ctx.trunk_layer is None and "differs" in ctx.trunk_note)
    _CONTEXT.clear()  # the model is not needed after the step
    return {
        "chunks_by": by,
        "driver_chunks": by.get("driver", 0),
        "n_train": len(ctx.splits["train"]),
        "n_val": len(ctx.splits["val"]),
        "checkpoints": ctx.n_checkpoints,
        "dim": ctx.dim,
        "projector": ctx.kind,
        "k_chosen_because": proj.meta.get("reason"),  # the projection step's choice, repeated where k is used
        "k_worst_task_fidelity": proj.meta.get("worst_task_fidelity"),
        "trunk": ctx.trunk_note or "not reported: no chunk computed in this process (Dask workers, or resumed)",
        "precision": resolve_precision(fc.precision, resolve_device(recipe.model)),
        "row_space": feature_space(recipe, warm, proj),
        "rows_reused": ctx.reuse.count(),
        "rows_computed": sum(len(r) for r in ctx.splits.values()) - ctx.reuse.count(),
        "reused_from": ctx.reuse.summary(),
        # the source whose validation features these are, bit for bit (the influence step reuses its rows)
        "val_from": _val_source(ctx),
    }


STEP = Step(
    name="features",
    doc="Computes the projected gradient features of pool and validation examples.",
    inputs=(Input("data"), Input("warmup"), Input("projection")),
    sections=("model", "features"),
    # batching, and what only chooses k (the projection input says which k)
    ignore={"features": ("max_tokens", "fidelity_rows", "min_fidelity", "max_store_gb", "reuse")},
    identity=precision,
    pool="gpu",
    build=build,
)
