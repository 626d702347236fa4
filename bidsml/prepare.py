"""Assemble a run's data: the instruction pool, validation examples and test items."""

from __future__ import annotations

import random

from bidsml.config import DataConfig, ModelConfig
from bidsml.data import Example, LoadReport, read_hf_disk, read_jsonl, tokenize_example
from bidsml.errors import DataError
from bidsml.sources import load_pool_source, load_target, sample_balanced


def load_pool(cfg: DataConfig, seed: int) -> tuple[list[Example], dict]:
    """Returns the pool (seeded sample per source, stable order) and per-source counts."""
    pool: list[Example] = []
    counts = {}
    for i, src in enumerate(cfg.pool):
        if src.source == "jsonl":
            if not src.path:
                raise DataError(f"data.pool.{i}: source 'jsonl' needs a path")
            exs, rep = read_jsonl(src.path)
        elif src.source == "hf_disk":
            if not src.path:
                raise DataError(f"data.pool.{i}: source 'hf_disk' needs a path")
            exs, rep = read_hf_disk(src.path)
        else:
            exs = load_pool_source(src.source)
            rep = LoadReport(read=len(exs), kept=len(exs))
        available = len(exs)
        if src.n is not None:
            if src.n > available:
                raise DataError(f"data.pool.{i}: asked for n={src.n} from {src.source!r}, which has {available}")
            rng = random.Random(f"{seed}/{src.source}/{i}")
            exs = [exs[j] for j in sorted(rng.sample(range(available), src.n))]
        counts[src.path or src.source] = {**rep.as_dict(), "available": available, "taken": len(exs)}
        pool.extend(exs)
    dup = len(pool) - len({e.id for e in pool})
    if dup:
        raise DataError(f"the pool has {dup} duplicate example ids; ids must be unique across sources")
    return pool, counts


def load_targets(cfg: DataConfig, seed: int) -> tuple[list[Example], list[Example], dict]:
    """Returns (validation examples, test items, counts); the two never share an id."""
    val, test, counts = [], [], {}
    for t in cfg.targets:
        v_all, t_all = load_target(t.task)
        v = sample_balanced(v_all, t.n_val, seed)
        te = sample_balanced(t_all, t.n_test, seed + 1)
        if len(v) < t.n_val or len(te) < t.n_test:
            raise DataError(f"target {t.task!r}: asked for {t.n_val} validation / {t.n_test} test, have {len(v_all)} / {len(t_all)}")
        val.extend(v)
        test.extend(te)
        counts[t.task] = {"val": len(v), "test": len(te), "val_available": len(v_all), "test_available": len(t_all)}
    return val, test, counts


def drop_untrainable(tokenizer, examples: list[Example], model_cfg: ModelConfig) -> tuple[list[Example], list[str], int]:
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
