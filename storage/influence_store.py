"""Influence store: the N x M matrix in Zarr, its scores as Parquet blocks for SQL, example tables in DuckDB.

Layout of an influence artifact:

- ``influence.zarr``: A [N, M] float32 in row blocks (the unit of compute,
  resume and reading); ``blocks_done/block-<i>`` marks a finished block, so a
  killed run resumes at its first unfinished block;
- ``scores/block-<i>.parquet``: the same block in long format
  (train_idx, val_idx, score), written as it is computed: DuckDB reads the
  files directly, nothing ever builds an N*M-row frame in memory;
- ``influence.duckdb``: the small tables train_examples(idx, id, source,
  n_tokens), val_examples(idx, id, task, subtask, capability) and
  checkpoints(c, step, mean_lr, weight).

`open_influence` returns a DuckDB session with those tables, the view
`influence` over the Parquet blocks and the views users query (task_stats,
top_train_for_task, ...). Selection reads the Zarr matrix block by block.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from bidsml.errors import ArtifactError
from storage.names import INFLUENCE_DB, T_CKPT, T_COLSTATS, T_INFLUENCE, T_TRAIN, T_VAL

INFLUENCE_ZARR = "influence.zarr"
SCORES_DIR = "scores"
BLOCKS_DONE_DIR = "blocks_done"
BLOCK_ROWS = 16384  # rows per block: ~64 MB of float32 scores at M = 1,000

# Views users query (`bidsflow query RUN "SQL"`); normalised = z-score of a
# validation column over all training rows (sample std), as BIDS does.
# Percentiles are approximate (t-digest): exact quantiles hold every score in memory (1e9 at 1M x 1k).
VIEWS = [
    f"""CREATE TEMP VIEW normalized_influence AS
    SELECT train_idx, val_idx, score,
           (score - avg(score) OVER w) / nullif(stddev_samp(score) OVER w, 0) AS z
    FROM {T_INFLUENCE} WINDOW w AS (PARTITION BY val_idx)""",
    f"""CREATE TEMP VIEW task_influence AS
    SELECT n.train_idx, v.task, avg(n.score) AS score, avg(n.z) AS z
    FROM normalized_influence n JOIN {T_VAL} v ON v.idx = n.val_idx
    GROUP BY n.train_idx, v.task""",
    f"""CREATE TEMP VIEW task_stats AS
    WITH z AS (
        SELECT i.val_idx, i.score, (i.score - c.mean) / nullif(c.std, 0) AS z
        FROM {T_INFLUENCE} i JOIN {T_COLSTATS} c ON c.val_idx = i.val_idx
    )
    SELECT v.task, count(DISTINCT z.val_idx) AS n_val,
           avg(z.score) AS raw_mean, stddev_samp(z.score) AS raw_std, min(z.score) AS raw_min, max(z.score) AS raw_max,
           approx_quantile(z.score, 0.99) AS raw_p99, avg(z.z) AS z_mean, stddev_samp(z.z) AS z_std,
           max(z.z) AS z_max, approx_quantile(z.z, 0.99) AS z_p99
    FROM z JOIN {T_VAL} v ON v.idx = z.val_idx
    GROUP BY v.task ORDER BY v.task""",
    f"""CREATE TEMP VIEW top_train_for_val AS
    SELECT i.val_idx, v.id AS val_id, v.task, i.train_idx, t.id AS train_id, t.source, i.score,
           row_number() OVER (PARTITION BY i.val_idx ORDER BY i.score DESC, i.train_idx) AS rank
    FROM {T_INFLUENCE} i JOIN {T_TRAIN} t ON t.idx = i.train_idx JOIN {T_VAL} v ON v.idx = i.val_idx""",
    f"""CREATE TEMP VIEW top_train_for_task AS
    SELECT ti.task, ti.train_idx, t.id AS train_id, t.source, ti.score, ti.z,
           row_number() OVER (PARTITION BY ti.task ORDER BY ti.score DESC, ti.train_idx) AS rank
    FROM task_influence ti JOIN {T_TRAIN} t ON t.idx = ti.train_idx""",
]


def influence_db_path(root: Path) -> Path:
    return Path(root) / INFLUENCE_DB


def influence_matrix_path(root: Path) -> Path:
    return Path(root) / INFLUENCE_ZARR


def _block_marker(root: Path, i: int) -> Path:
    return Path(root) / BLOCKS_DONE_DIR / f"block-{i:06d}"


def _block_parquet(root: Path, i: int) -> Path:
    return Path(root) / SCORES_DIR / f"block-{i:06d}.parquet"


def write_influence_blocks(
    root: Path,
    n: int,
    m: int,
    compute: Callable[[int, int], np.ndarray],
    block_rows: int = BLOCK_ROWS,
    on_block: Callable[[int, int, bool], None] | None = None,
) -> int:
    """Fills the N x M matrix block by block, skipping finished blocks; returns how many blocks were computed.

    `compute(start, stop)` returns the (stop - start, M) float32 scores of those
    pool rows. Each block is written to Zarr and Parquet, then marked done.
    """
    root = Path(root)
    path = influence_matrix_path(root)
    if not path.exists():
        zarr.create_array(
            str(path), shape=(n, m), chunks=(block_rows, m), dtype="float32", compressors=None, fill_value=0
        )
    arr = zarr.open_array(str(path), mode="r+")
    if arr.shape != (n, m) or arr.chunks[0] != block_rows:
        raise ArtifactError(
            f"{path}: existing matrix {arr.shape} / {arr.chunks} does not match ({n}, {m}) / {block_rows}"
        )
    (root / BLOCKS_DONE_DIR).mkdir(exist_ok=True)
    (root / SCORES_DIR).mkdir(exist_ok=True)
    n_blocks = (n + block_rows - 1) // block_rows
    computed = 0
    for i in range(n_blocks):
        start, stop = i * block_rows, min(n, (i + 1) * block_rows)
        done = _block_marker(root, i).exists()
        if not done:
            block = np.ascontiguousarray(compute(start, stop), dtype=np.float32)
            if block.shape != (stop - start, m):
                raise ArtifactError(f"influence block {i}: shape {block.shape}, expected {(stop - start, m)}")
            arr[start:stop] = block
            table = pa.table(
                {
                    "train_idx": pa.array(np.repeat(np.arange(start, stop, dtype=np.int32), m)),
                    "val_idx": pa.array(np.tile(np.arange(m, dtype=np.int32), stop - start)),
                    "score": pa.array(block.ravel()),
                }
            )
            tmp = _block_parquet(root, i).with_suffix(".tmp")
            pq.write_table(table, tmp, compression="snappy", row_group_size=1 << 20)
            tmp.replace(_block_parquet(root, i))
            _block_marker(root, i).touch()
            computed += 1
        if on_block:
            on_block(i, n_blocks, done)
    return computed


def save_influence_tables(root: Path, train: pd.DataFrame, val: pd.DataFrame, ckpts: pd.DataFrame) -> Path:
    """Writes the example, checkpoint and per-column statistics tables (DuckDB); returns the database path.

    Column statistics (fp64 mean and sample std of each validation column over
    the pool, streamed from the Zarr matrix) let `task_stats` z-score in one
    pass over the scores instead of two.
    """
    from bidsml.selection import column_stats

    mean, std, constant = column_stats(zarr.open_array(str(influence_matrix_path(root)), mode="r"))
    cols = pd.DataFrame({"val_idx": np.arange(len(mean)), "mean": mean, "std": std, "constant": constant})
    path = influence_db_path(root)
    if path.exists():
        path.unlink()
    con = duckdb.connect(str(path))
    try:
        for name, df in ((T_TRAIN, train), (T_VAL, val), (T_CKPT, ckpts), (T_COLSTATS, cols)):
            con.register("df_view", df)
            con.execute(f"CREATE TABLE {name} AS SELECT * FROM df_view")
            con.unregister("df_view")
    finally:
        con.close()
    return path


def save_influence(root: Path, A: np.ndarray, train: pd.DataFrame, val: pd.DataFrame, ckpts: pd.DataFrame) -> Path:
    """Writes a whole in-memory matrix and its tables (small stores, tests); returns the database path."""
    write_influence_blocks(
        root, A.shape[0], A.shape[1], lambda a, b: A[a:b], block_rows=min(BLOCK_ROWS, max(1, len(A)))
    )
    return save_influence_tables(root, train, val, ckpts)


def _quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def attach_influence(con: duckdb.DuckDBPyConnection, root: Path) -> duckdb.DuckDBPyConnection:
    """Adds a store's tables and views to a DuckDB session (temp views, so nothing is written)."""
    db = influence_db_path(root)
    if not db.exists():
        raise ArtifactError(f"influence store not found: {db}")
    con.execute(f"ATTACH {_quote(str(db))} AS influence_tables (READ_ONLY)")
    for t in (T_TRAIN, T_VAL, T_CKPT, T_COLSTATS):
        con.execute(f"CREATE TEMP VIEW {t} AS SELECT * FROM influence_tables.{t}")
    files = str(Path(root) / SCORES_DIR / "*.parquet")
    con.execute(f"CREATE TEMP VIEW {T_INFLUENCE} AS SELECT * FROM read_parquet({_quote(files)})")
    for sql in VIEWS:
        con.execute(sql)
    return con


# DuckDB's memory for one session (it spills big joins and aggregates to disk beyond it); its default, 80% of
# RAM, would let a 1e9-score query crowd out the selection that follows.
DUCKDB_MEMORY = os.environ.get("BIDSFLOW_DUCKDB_MEMORY", "4GB")


def duckdb_session() -> duckdb.DuckDBPyConnection:
    """Returns an in-memory DuckDB session with bidsflow's memory limit."""
    return duckdb.connect(config={"memory_limit": DUCKDB_MEMORY})


def open_influence(root: Path) -> duckdb.DuckDBPyConnection:
    """Returns a DuckDB session over a published influence store (read-only)."""
    return attach_influence(duckdb_session(), root)


def read_influence_matrix(root: Path, rows: slice | None = None) -> np.ndarray:
    """Returns A (or a row range of it) as float32, read block by block from Zarr."""
    arr = zarr.open_array(str(influence_matrix_path(root)), mode="r")
    n = arr.shape[0]
    start, stop, _ = (rows or slice(0, n)).indices(n)
    out = np.empty((stop - start, arr.shape[1]), dtype=np.float32)
    step = arr.chunks[0]
    s = start
    while s < stop:  # whole-block reads (the first and last may be partial)
        e = min(stop, s - s % step + step)
        out[s - start : e - start] = arr[s:e]
        s = e
    return out


def read_influence_rows(root: Path, rows: np.ndarray) -> np.ndarray:
    """Returns A[rows] (in the order given) as float32, reading only the blocks that hold them."""
    arr = zarr.open_array(str(influence_matrix_path(root)), mode="r")
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((len(rows), arr.shape[1]), dtype=np.float32)
    step = arr.chunks[0]
    blocks = rows // step
    for b in np.unique(blocks):
        where = np.flatnonzero(blocks == b)
        block = arr[b * step : min(arr.shape[0], (b + 1) * step)]
        out[where] = block[rows[where] - b * step]
    return out


def influence_matrix_array(root: Path):
    """Returns the on-disk Zarr matrix (sliceable like an array, read lazily)."""
    return zarr.open_array(str(influence_matrix_path(root)), mode="r")


def load_column_stats(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns per-column (mean, sample std, is-constant) over the pool, as `save_influence_tables` stored them."""
    con = duckdb.connect(str(influence_db_path(root)), read_only=True)
    try:
        cols = con.sql(f"SELECT mean, std, constant FROM {T_COLSTATS} ORDER BY val_idx").fetchnumpy()
    finally:
        con.close()
    return cols["mean"].astype(np.float64), cols["std"].astype(np.float64), cols["constant"].astype(bool)


def load_influence_tables(root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Returns (train_examples, val_examples) of a store."""
    con = duckdb.connect(str(influence_db_path(root)), read_only=True)
    try:
        return con.sql(f"SELECT * FROM {T_TRAIN} ORDER BY idx").df(), con.sql(
            f"SELECT * FROM {T_VAL} ORDER BY idx"
        ).df()
    finally:
        con.close()


def load_influence(root: Path) -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame]:
    """Returns (A (N x M) float32, train_examples, val_examples) from the store."""
    con = duckdb.connect(str(influence_db_path(root)), read_only=True)
    try:
        train = con.sql(f"SELECT * FROM {T_TRAIN} ORDER BY idx").df()
        val = con.sql(f"SELECT * FROM {T_VAL} ORDER BY idx").df()
    finally:
        con.close()
    return read_influence_matrix(root), train, val
