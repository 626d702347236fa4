"""Step `features`: per-example gradient features of pool (Adam) and validation (SGD), per checkpoint, in Zarr.

The pool is cut into shards of `execution.shard_chunks` Zarr chunks; `b.map`
submits them to the run's task runner (this process, or Dask workers), and
the build then writes any chunk a shard left undone (resume) and the example
metadata. Chunks already written are never recomputed.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from bidsml.data.examples import tokenize_all
from bidsml.evaluation.model_calls import _causal_lm
from bidsml.evaluation.trunk import trunk_layer
from bidsml.gradients.features import CheckpointState, compute_features_checkpoints, lora_linears, resolve_precision
from bidsml.model import load_tokenizer, resolve_device, torch_threads
from bidsml.gradients.projection import ExactProjector, make_projector
from bidsml.training.trunk import TRUNK_CHECK_TOLERANCE, check_trunk
from tasks.step import Build, Input, Step, executor
from bidsml.gradients.checkpoints import feature_model
from storage.checkpoints import load_checkpoints
from storage.datasets import SPLIT_FILES, load_split
from storage.gradients import chunk_builders, create_groups, save_examples_meta, write_chunks_checkpoints
from storage.names import CHUNK_BUILDERS_DIR


def precision(recipe, inputs, params) -> dict:
    """Returns the forward precision resolved for the device: `auto` means different numbers on CPU and GPU."""
    return {"precision": resolve_precision(recipe.features.precision, resolve_device(recipe.model))}


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
    model: object = None
    projector: object = None
    states: list[CheckpointState] | None = None
    precision: str = ""
    trunk_layer: int | None = None  # the first adapted layer: the states entering it are shared by all checkpoints
    trunk_note: str = ""

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
        _CONTEXT[key] = FeatureContext(recipe, warm, dim, kind, tok, splits, len(load_checkpoints(warm)))
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
        ctx.loaded()
        items, _ = tokenize_all(ctx.tok, rows[start:stop], recipe.model.max_seq_length)
        chunk_meta(ctx, work, split, start // fc.chunk_rows, items)  # before the chunk's markers
        # validation gradients are plain ("sgd"): no Adam transform
        run = [
            CheckpointState(ctx.states[c].weights, ctx.states[c].transform if split == "train" else None) for c in todo
        ]
        out = compute_features_checkpoints(
            ctx.model, items, ctx.projector, ctx.tok.pad_token_id, run, fc.max_tokens, ctx.precision, ctx.trunk_layer
        )
        return {c: (f.numpy(), n.numpy()) for c, (f, n) in zip(todo, out)}

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


def write_shard(recipe, data, warm, proj, work: Path, threads: int | None, split: str, first: int, end: int) -> int:
    """Computes one shard (chunks first..end-1 of a split) into the work folder; returns the chunks written."""
    return write_feature_chunks(recipe, data, warm, proj, work, split, range(first, end), threads)


def shard_name(recipe, data, warm, proj, work, threads, split: str, first: int, end: int) -> str:
    return f"feature shard {split} chunks {first}-{end}"


def chunks_by_executor(builders: list[dict]) -> dict[str, int]:
    """Returns {"driver" or "worker <name> (<host>)": chunks computed} from the per-chunk records."""
    out: dict[str, int] = {}
    for b in builders:
        who = "driver" if b.get("worker") is None else f"worker {b['worker']} ({b['host']})"
        out[who] = out.get(who, 0) + 1
    return dict(sorted(out.items()))


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
        shards += [
            (recipe, data, warm, proj, work, threads, split, a, min(n_chunks, a + step))
            for a in range(0, n_chunks, step)
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
    }


STEP = Step(
    name="features",
    doc="Computes the projected gradient features of pool and validation examples.",
    inputs=(Input("data"), Input("warmup"), Input("projection")),
    sections=("model", "features"),
    # batching, and what only chooses k (the projection input says which k)
    ignore={"features": ("max_tokens", "fidelity_rows", "min_fidelity", "max_store_gb")},
    identity=precision,
    pool="gpu",
    build=build,
)
