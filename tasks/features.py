"""Step 2: per-example gradient features for pool (Adam) and validation (SGD), per checkpoint, in Zarr."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import dask
from prefect import flow, get_run_logger, task
from tqdm.auto import tqdm

from bidsml.config import Recipe
from bidsml.data import tokenize_all
from bidsml.features import CheckpointState, compute_features_checkpoints, lora_linears, resolve_precision
from bidsml.model import load_tokenizer, resolve_device
from bidsml.projection import make_projector
from storage.checkpoint_states import feature_model
from storage.checkpoints import load_checkpoints
from storage.datasets import SPLIT_FILES, load_split
from storage.gradients import chunk_builders, create_groups, save_examples_meta, write_chunks_checkpoints
from storage.names import CHUNK_BUILDERS_DIR
from storage.refs import ArtifactRef, Plan, materialize, work_dir
from tasks.common import (
    ArtifactCachePolicy,
    Progress,
    artifact_key,
    code_version,
    model_inputs,
    publish,
    ref_inputs,
    run_root,
    run_tag,
)
from tasks.execution import (
    cluster,
    dask_runner,
    executor,
    gpu_resources,
    note_code_at_start,
    pin_worker_gpu,
    reporting_lost_scheduler,
    torch_threads,
)

CODE = code_version(__name__)


def plan_features(recipe: Recipe, data: ArtifactRef, warm: ArtifactRef) -> Plan:
    return Plan(
        run_root=run_root(recipe),
        kind="features",
        inputs={
            **ref_inputs(data=data, warmup=warm),
            **model_inputs(recipe),
            # batching does not change features; the forward precision does (resolved for the device)
            "features": {
                **recipe.features.model_dump(mode="json", exclude={"max_tokens", "fidelity_rows"}),
                "precision": resolve_precision(recipe.features.precision, resolve_device(recipe.model)),
            },
            "code": CODE,
        },
    )


@dataclass
class FeatureContext:
    """What computing features needs, built once per process (a Dask worker keeps it across shards).

    The model, projector and checkpoint states load on first use (`loaded()`):
    a process that only finalises finished shards never loads the model.
    """

    recipe: Recipe
    warm: ArtifactRef
    tok: object
    splits: dict[str, list]  # split -> examples (tokenized chunk by chunk, only where a chunk is computed)
    n_checkpoints: int
    model: object = None
    projector: object = None
    states: list[CheckpointState] | None = None
    precision: str = ""

    def loaded(self) -> FeatureContext:
        if self.model is None:
            fc = self.recipe.features
            model, self.states, self.precision = feature_model(self.recipe, self.warm)
            shapes = {n: tuple(m.weight.shape) for n, m in lora_linears(model)}
            self.projector = make_projector(fc.projector, fc.proj_dim, fc.proj_seed, shapes)
            self.model = model
        return self


_CONTEXT: dict[str, FeatureContext] = {}  # at most one: {features identity: context}


def _context(recipe: Recipe, data: ArtifactRef, warm: ArtifactRef) -> FeatureContext:
    """Returns the feature context of this step, built on first use in this process and kept for its shards."""
    key = plan_features(recipe, data, warm).identity
    if key not in _CONTEXT:
        _CONTEXT.clear()
        _CONTEXT[key] = _build_context(recipe, data, warm)
    return _CONTEXT[key]


def _build_context(recipe: Recipe, data: ArtifactRef, warm: ArtifactRef) -> FeatureContext:
    pin_worker_gpu()  # one GPU per Dask worker
    tok = load_tokenizer(recipe.model)
    splits = {split: load_split(data, split) for split in SPLIT_FILES}
    return FeatureContext(recipe, warm, tok, splits, len(load_checkpoints(warm)))


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
    recipe: Recipe, data: ArtifactRef, warm: ArtifactRef, work: Path, split: str, chunks: range | None, on_chunk=None
) -> int:
    """Computes and writes the unfinished chunks of `split` (all, or a shard's range); returns how many."""
    fc = recipe.features
    ctx = _context(recipe, data, warm)
    rows = ctx.splits[split]

    def compute(start, stop, todo):
        with torch_threads(fc.threads if fc.threads is not None else recipe.execution.threads):
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
            ctx.model, items, ctx.projector, ctx.tok.pad_token_id, run, fc.max_tokens, ctx.precision
        )
        return {c: (f.numpy(), n.numpy()) for c, (f, n) in zip(todo, out)}

    return write_chunks_checkpoints(
        work,
        split,
        list(range(ctx.n_checkpoints)),
        len(rows),
        fc.proj_dim,
        fc.chunk_rows,
        compute,
        on_chunk,
        chunks,
        by=executor(),
    )


def feature_shards(recipe: Recipe, data: ArtifactRef, warm: ArtifactRef, work: Path) -> list[tuple[str, int, int]]:
    """Pre-sizes the store in the work folder; returns the shards (split, first chunk, end chunk)."""
    fc, ex = recipe.features, recipe.execution
    ctx = _context(recipe, data, warm)
    shards = []
    for split, items in ctx.splits.items():
        for c in range(ctx.n_checkpoints):
            create_groups(work, split, c, len(items), fc.proj_dim, fc.chunk_rows)
        n_chunks = -(-len(items) // fc.chunk_rows)
        shards += [(split, a, min(n_chunks, a + ex.shard_chunks)) for a in range(0, n_chunks, ex.shard_chunks)]
    return shards


def chunks_by_executor(builders: list[dict]) -> dict[str, int]:
    """Returns {"driver" or "worker <name> (<host>)": chunks computed} from the per-chunk records."""
    out: dict[str, int] = {}
    for b in builders:
        who = "driver" if b.get("worker") is None else f"worker {b['worker']} ({b['host']})"
        out[who] = out.get(who, 0) + 1
    return dict(sorted(out.items()))


@flow(name="featurize-shards", flow_run_name="feature shards on Dask", log_prints=True)
def featurize_shards_flow(recipe: Recipe, data: ArtifactRef, warm: ArtifactRef) -> int:
    """Fans the feature shards out to the flow's task runner (Dask workers); returns the chunks computed."""
    work = work_dir(plan_features(recipe, data, warm))
    shards = feature_shards(recipe, data, warm, work)
    shard = featurize_shard.with_options(retries=recipe.execution.retries)
    with dask.annotate(resources=gpu_resources(recipe)) if gpu_resources(recipe) else contextlib.nullcontext():
        futures = [shard.submit(recipe, data, warm, split, a, b) for split, a, b in shards]
    return sum(f.result() for f in futures)


@task(retries=2, retry_delay_seconds=1, task_run_name="feature shard {split} chunks {first}-{end}")
def featurize_shard(recipe: Recipe, data: ArtifactRef, warm: ArtifactRef, split: str, first: int, end: int) -> int:
    """Computes one shard (chunks first..end-1 of a split) into the features work folder; returns chunks written."""
    note_code_at_start()  # a later run's preflight can tell this worker runs stale code
    work = work_dir(plan_features(recipe, data, warm))
    return write_feature_chunks(recipe, data, warm, work, split, range(first, end))


@task(cache_policy=ArtifactCachePolicy(plan=plan_features), persist_result=True)
def featurize(recipe: Recipe, data: ArtifactRef, warm: ArtifactRef, refresh: bool = False) -> ArtifactRef:
    """Computes projected, normalised gradient features (any chunk a shard left undone); resumes chunk by chunk."""
    started = time.time()
    fc = recipe.features

    def build(work: Path) -> dict:
        if recipe.execution.task_runner == "dask":  # shards on the cluster; this process writes what is left
            with cluster(recipe) as address, reporting_lost_scheduler(recipe, "featurization"):
                featurize_shards_flow.with_options(task_runner=dask_runner(address))(recipe, data, warm)
        ctx = _context(recipe, data, warm)
        total = sum((len(v) + fc.chunk_rows - 1) // fc.chunk_rows for v in ctx.splits.values())
        progress = Progress(artifact_key("features-progress", run_tag(recipe)), "gradient feature chunks")
        bar = tqdm(total=total, desc=f"feature chunks ({ctx.n_checkpoints} checkpoints per pass)")
        done = 0

        def on_chunk(i, n_chunks, skipped):
            nonlocal done
            done += 1
            bar.update(1)
            progress.update(done, total)

        for split in ctx.splits:
            write_feature_chunks(recipe, data, warm, work, split, None, on_chunk)
        bar.close()
        meta = {}
        for split, rows in ctx.splits.items():
            parts = [chunk_meta(ctx, work, split, i) for i in range(-(-len(rows) // fc.chunk_rows))]
            meta[split] = {
                "ids": sum((p["ids"] for p in parts), []),
                "n_tokens": sum((p["n_tokens"] for p in parts), []),
            }
        shutil.rmtree(work / "chunk_meta", ignore_errors=True)  # merged into examples.json
        save_examples_meta(work, meta)
        by = chunks_by_executor(chunk_builders(work))  # who computed what: meta.json only, not the content
        shutil.rmtree(work / CHUNK_BUILDERS_DIR, ignore_errors=True)
        get_run_logger().info(
            "feature chunks computed by: " + (", ".join(f"{k}: {v}" for k, v in by.items()) or "none (all resumed)")
        )
        return {
            "chunks_by": by,
            "driver_chunks": by.get("driver", 0),
            "n_train": len(ctx.splits["train"]),
            "n_val": len(ctx.splits["val"]),
            "checkpoints": ctx.n_checkpoints,
            "dim": fc.proj_dim,
            "precision": resolve_precision(fc.precision, resolve_device(recipe.model)),
        }

    ref = materialize(plan_features(recipe, data, warm), build, force=refresh)
    _CONTEXT.clear()  # the model is not needed after the step
    return publish(ref, "featurize", {"features": fc.model_dump()}, [data, warm], started, tag=run_tag(recipe))
