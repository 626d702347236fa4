"""Assemble a run's data: the instruction pool, validation examples and test items."""

from __future__ import annotations

import random
from collections.abc import Callable

from bidsml.evaluation.benchmarks import benchmark_for
from bidsml.config import DataConfig, ModelConfig
from bidsml.data.examples import Example, round_robin_sample, tokenize_example
from bidsml.errors import DataError
from bidsml.data.sources import SOURCES, load_source


def user_files(cfg: DataConfig) -> list[str]:
    """Returns the users' files the data step reads (pool files, target files): their content is identity."""
    files = [s.path for s in cfg.pool if s.path]
    for t in cfg.targets:
        files += benchmark_for(t).files()
    return sorted(set(files))


def sample_balanced(examples: list[Example], n: int, seed: int) -> list[Example]:
    """Returns n examples, spread over subtasks round-robin (seeded), in a stable order."""
    return round_robin_sample(examples, n, seed, key=lambda e: e.subtask or "")


def load_pool(cfg: DataConfig, seed: int, drop: Callable[[Example], bool] | None = None) -> tuple[list[Example], dict]:
    """Returns the pool (seeded sample per source, stable order) and per-source counts.

    `drop`: applied to a planted source's rows before sampling (rows sharing a 13-gram with what the recipe
    scores or validates on); how many it removed is counted per source.
    """
    pool: list[Example] = []
    counts = {}
    targets = {t.kind or t.task for t in cfg.targets}
    for i, src in enumerate(cfg.pool):
        bad = SOURCES[src.source].contaminates
        if bad in targets:
            raise DataError(
                f"data.pool.{i}: source {src.source!r} holds the test problems of target {bad!r}; drop one of them"
            )
        try:
            exs, rep = load_source(src.source, src.path)
        except DataError as err:
            raise DataError(f"data.pool.{i}: {err}") from None
        dropped = 0
        if drop is not None and SOURCES[src.source].plants:
            kept = [e for e in exs if not drop(e)]
            dropped, exs = len(exs) - len(kept), kept
        available = len(exs)
        if src.n is not None:
            if src.n > available:
                raise DataError(f"data.pool.{i}: asked for n={src.n} from {src.source!r}, which has {available}")
            rng = random.Random(f"{seed}/{src.source}/{i}")
            exs = [exs[j] for j in sorted(rng.sample(range(available), src.n))]
        counts[src.path or src.source] = {**rep.as_dict(), "available": available, "taken": len(exs)}
        if SOURCES[src.source].plants:
            counts[src.path or src.source] |= {"planted_for": SOURCES[src.source].plants, "dropped_overlap": dropped}
        pool.extend(exs)
    dup = len(pool) - len({e.id for e in pool})
    if dup:
        raise DataError(f"the pool has {dup} duplicate example ids; ids must be unique across sources")
    return pool, counts


def load_targets(
    cfg: DataConfig, seed: int, fits: Callable[[Example], bool] | None = None
) -> tuple[list[Example], dict]:
    """Returns (validation examples, counts) from the targets' dev / few-shot material.

    Validation examples are sampled among the candidates that `fits` accepts
    (those with an assistant token left within max_seq_length); the number
    passed over is reported. The items evaluation scores (`bidsml.evaluation.benchmarks`)
    never include these.
    """
    val, counts = [], {}
    for t in cfg.targets:
        v_all = benchmark_for(t).validation()
        n_candidates = len(v_all)
        if fits is not None:
            v_all = [e for e in v_all if fits(e)]
        v = sample_balanced(v_all, t.n_val, seed)
        if len(v) < t.n_val:
            too_long = n_candidates - len(v_all)
            raise DataError(
                f"target {t.task!r}: asked for {t.n_val} validation examples, have {len(v_all)}"
                + (f" ({too_long} candidates do not fit in max_seq_length)" if too_long else "")
            )
        val.extend(v)
        counts[t.task] = {"val": len(v), "val_too_long": n_candidates - len(v_all), "val_available": len(v_all)}
    return val, counts


def fits_in(tokenizer, max_seq_length: int) -> Callable[[Example], bool]:
    """Returns a predicate: does the example keep an assistant token within max_seq_length?"""

    def fits(ex: Example) -> bool:
        try:
            tokenize_example(tokenizer, ex, max_seq_length)
        except DataError:
            return False
        return True

    return fits


def drop_untrainable(
    tokenizer, examples: list[Example], model_cfg: ModelConfig
) -> tuple[list[Example], list[str], int]:
    """Returns (kept examples, rejected reasons, truncated count) for the pool.

    An example with no assistant token left after truncation is rejected with
    its id, never silently dropped.
    """
    kept, rejected, truncated = [], [], 0
    for ex in examples:
        try:
            t = tokenize_example(tokenizer, ex, model_cfg.max_seq_length)
        except DataError as err:
            rejected.append(str(err))
            continue
        truncated += t.truncated
        kept.append(ex)
    return kept, rejected, truncated
