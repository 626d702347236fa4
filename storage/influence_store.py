"""Influence store: the N x M matrix once, as a row-major .npy file; its statistics and example tables in DuckDB.

Layout of an influence artifact:

- ``influence.npy``: A [N, M] float32, row-major, written in row blocks (the
  unit of compute and resume); ``blocks_done/block-<i>`` marks a finished
  block, so a killed run resumes at its first unfinished block. It is the only
  copy of the scores: selection streams it block by block and reads the rows
  BIDS picks one by one (`StoredMatrix`), so no step holds it whole;
- ``stats.npz``: what the same pass computes beside the scores: per-column
  moments, min and max (`bidsml.selection.ColumnMoments`, the bits the
  in-memory path computes) and an evenly spaced sample of rows (quantiles,
  BIDS's first thresholds);
- ``influence.duckdb``: train_examples(idx, id, source, n_tokens, ...),
  val_examples(idx, id, task, subtask, capability), checkpoints(c, step,
  mean_lr, weight), column_stats and task_stats (from those statistics: no
  second scan over N*M scores).

`open_influence` returns a DuckDB session with those tables and the views
users query. The long table `influence(train_idx, val_idx, score)` and the
views built on it (normalized_influence, task_influence, top_train_for_val,
top_train_for_task) read the matrix file itself, streamed to DuckDB as Arrow
record batches (`ScoreStream`): a query writes nothing beside its result.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from bidsml.errors import ArtifactError
from bidsml.selection import STATS_ROWS, ColumnMoments, zscore
from bidsml.influence.streamed import sample_rows
from storage.names import INFLUENCE_DB, T_CKPT, T_COLSTATS, T_INFLUENCE, T_TASKSTATS, T_TRAIN, T_VAL

INFLUENCE_NPY = "influence.npy"
STATS_NPZ = "stats.npz"
BLOCKS_DONE_DIR = "blocks_done"
BLOCK_ROWS = STATS_ROWS  # rows per block: ~64 MB of float32 scores at M = 1,000

# Views users query (`bidsflow query "SQL" --run RUN`); normalised = z-score of a
# validation column over all training rows (sample std), as BIDS does. They scan all N*M scores, as do the
# streams `influence` (ScoreStream) and `task_influence` (TaskScoreStream) they are built on.
SCORE_VIEWS = [
    f"""CREATE TEMP VIEW normalized_influence AS
    SELECT i.train_idx, i.val_idx, i.score, (i.score - c.mean) / nullif(c.std, 0) AS z
    FROM {T_INFLUENCE} i JOIN {T_COLSTATS} c ON c.val_idx = i.val_idx""",
    f"""CREATE TEMP VIEW top_train_for_val AS
    SELECT i.val_idx, v.id AS val_id, v.task, i.train_idx, t.id AS train_id, t.source, i.score,
           row_number() OVER (PARTITION BY i.val_idx ORDER BY i.score DESC, i.train_idx) AS rank
    FROM {T_INFLUENCE} i JOIN {T_TRAIN} t ON t.idx = i.train_idx JOIN {T_VAL} v ON v.idx = i.val_idx""",
    f"""CREATE TEMP VIEW top_train_for_task AS
    SELECT ti.task, ti.train_idx, t.id AS train_id, t.source, ti.score, ti.z,
           row_number() OVER (PARTITION BY ti.task ORDER BY ti.score DESC, ti.train_idx) AS rank
    FROM task_influence ti JOIN {T_TRAIN} t ON t.idx = ti.train_idx""",
]
SCORE_VIEW_NAMES = (T_INFLUENCE, "normalized_influence", "task_influence", "top_train_for_val", "top_train_for_task")


def influence_db_path(root: Path) -> Path:
    return Path(root) / INFLUENCE_DB


def influence_matrix_path(root: Path) -> Path:
    return Path(root) / INFLUENCE_NPY


def _block_marker(root: Path, i: int) -> Path:
    return Path(root) / BLOCKS_DONE_DIR / f"block-{i:06d}"


def store_bytes(n: int, m: int) -> int:
    """Returns the bytes of an N x M store (the float32 matrix; the tables and statistics are small beside it)."""
    return 4 * n * m


def check_disk_space(root: Path, n: int, m: int) -> None:
    """Raises ArtifactError naming `run_root` when root's filesystem lacks the room for an N x M store."""
    need = store_bytes(n, m)
    free = shutil.disk_usage(root).free
    if need > free:
        raise ArtifactError(
            f"the influence store of {n:,} x {m:,} needs {need / 2**30:.1f} GiB more at {root}, but its filesystem has"
            f" {free / 2**30:.1f} GiB free: free space there or set run_root to a directory on a larger filesystem"
        )


class StoredMatrix:
    """The store's N x M matrix as a `bidsml.influence.streamed.MatrixSource`: row blocks and single rows read from
    disk."""

    def __init__(self, root: Path):
        self.root = Path(root)
        path = influence_matrix_path(root)
        if not path.exists():
            raise ArtifactError(f"influence matrix not found: {path}")
        header = np.load(path, mmap_mode="r")
        self.shape, self.offset = tuple(header.shape), int(header.offset)
        if header.dtype != np.float32 or not header.flags.c_contiguous:
            raise ArtifactError(f"{path}: expected a row-major float32 matrix, found {header.dtype}")
        del header
        self.path = path
        self.block_rows = BLOCK_ROWS
        self._stats = None
        self._fd = None
        self._map = None

    def _read(self, start: int, stop: int) -> np.ndarray:
        m = self.shape[1]
        with open(self.path, "rb") as f:
            f.seek(self.offset + 4 * start * m)
            out = np.fromfile(f, dtype=np.float32, count=(stop - start) * m)
        if len(out) != (stop - start) * m:
            raise ArtifactError(f"{self.path}: rows {start}..{stop} are missing (a truncated store?)")
        return out.reshape(stop - start, m)

    def blocks(self, rows: int | None = None):
        rows = rows or self.block_rows
        for s in range(0, self.shape[0], rows):
            yield s, self._read(s, min(self.shape[0], s + rows))

    def rows(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        m = self.shape[1]
        out = np.empty((len(idx), m), dtype=np.float32)
        if len(idx) > self.shape[0] // 64:  # many rows: whole blocks read once each
            step = self.block_rows
            blocks = idx // step
            for b in np.unique(blocks):
                where = np.flatnonzero(blocks == b)
                block = self._read(int(b) * step, min(self.shape[0], (int(b) + 1) * step))
                out[where] = block[idx[where] - b * step]
            return out
        if self._fd is None:  # kept open: BIDS reads one row per pick
            self._fd = os.open(self.path, os.O_RDONLY)
        for i, r in enumerate(idx):
            out[i] = np.frombuffer(os.pread(self._fd, 4 * m, self.offset + 4 * int(r) * m), dtype=np.float32)
        return out

    def array(self) -> np.ndarray:
        """Returns the matrix memory-mapped read-only (a plain ndarray view: compiled loops read it in place)."""
        if self._map is None:
            with open(self.path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        n, m = self.shape
        return np.frombuffer(self._map, dtype=np.float32, count=n * m, offset=self.offset).reshape(n, m)

    @contextlib.contextmanager
    def prefetch(self, tops: np.ndarray):
        """While the block runs, a thread asks the OS to read ahead (posix_fadvise WILLNEED) every row written to
        the ring `tops` (tops[0] counts them, tops[1:] holds the latest): BIDS's candidate rows, read from disk
        while the loop computes instead of when it picks them."""
        stop = threading.Event()
        size, row_bytes = len(tops) - 1, 4 * self.shape[1]

        def read_ahead():
            fd, seen = os.open(self.path, os.O_RDONLY), 0
            try:
                while not stop.is_set():
                    n = int(tops[0])
                    if n == seen:
                        time.sleep(1e-4)
                        continue
                    for i in range(max(seen, n - size), n):
                        os.posix_fadvise(fd, self.offset + row_bytes * int(tops[1 + i % size]), row_bytes,
                                         os.POSIX_FADV_WILLNEED)
                    seen = n
            finally:
                os.close(fd)

        thread = threading.Thread(target=read_ahead, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def release(self, start: int = 0, stop: int | None = None, over: int | None = None) -> None:
        """Lets this process's memory drop the mapped pages of rows start..stop (the page cache keeps them); with
        `over`, only when the process's resident file pages exceed that many bytes (a read of /proc/self/statm).

        A row read through the map maps the page cache's whole folio around it (up to 2 MB), so BIDS's picks
        would map most of the file; dropping them when they pass a budget bounds that, and re-reading a row
        still mapped costs nothing."""
        if self._map is None:
            return
        if over is not None:
            try:
                shared = int(Path("/proc/self/statm").read_text().split()[2]) * mmap.PAGESIZE
            except (OSError, IndexError, ValueError):
                shared = over + 1
            if shared <= over:
                return
        m = self.shape[1]
        stop = self.shape[0] if stop is None else stop
        lo = (self.offset + 4 * start * m) // mmap.PAGESIZE * mmap.PAGESIZE
        hi = min(len(self._map), -(-(self.offset + 4 * stop * m) // mmap.PAGESIZE) * mmap.PAGESIZE)
        if hi > lo:
            self._map.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def _load_stats(self) -> dict:
        if self._stats is None:
            self._stats = load_stats(self.root)
        return self._stats

    def column_stats(self):
        s = self._load_stats()
        return s["mean"], s["std"], s["constant"]

    def sample(self):
        s = self._load_stats()
        return s["sample_idx"], s["sample"]

    def nonfinite(self):
        bad = self._load_stats()["nonfinite"]
        return None if bad[0] < 0 else (int(bad[0]), int(bad[1]))


def load_stats(root: Path) -> dict[str, np.ndarray]:
    """Returns what the writing pass stored in `stats.npz` (column moments, extremes, row sample, ...)."""
    path = Path(root) / STATS_NPZ
    if not path.exists():
        raise ArtifactError(f"influence statistics not found: {path} (an unfinished store?)")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _create_matrix(path: Path, n: int, m: int) -> None:
    tmp = path.with_suffix(".tmp.npy")
    np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, m))._mmap.close()  # header, sparse body
    tmp.replace(path)


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
    pool rows. Each block is written, then marked done. The same pass
    accumulates the column statistics and the row sample (`stats.npz`; a
    resumed pass reads its finished blocks back for them). Refuses at once,
    naming run_root, when the filesystem lacks the room.
    """
    root = Path(root)
    path = influence_matrix_path(root)
    if not path.exists():
        check_disk_space(root, n, m)
        _create_matrix(path, n, m)
    src = StoredMatrix(root)
    if src.shape != (n, m):
        raise ArtifactError(f"{path}: existing matrix {src.shape} does not match ({n}, {m})")
    (root / BLOCKS_DONE_DIR).mkdir(exist_ok=True)
    n_blocks = (n + block_rows - 1) // block_rows
    moments = ColumnMoments(m)
    sample_idx = sample_rows(n)
    sample = np.empty((len(sample_idx), m), dtype=np.float32)
    nonfinite = np.array([-1, -1])
    todo = [i for i in range(n_blocks) if not _block_marker(root, i).exists()]
    rows_of = lambda i: (i * block_rows, min(n, (i + 1) * block_rows))  # noqa: E731

    def write(f, i: int, block: np.ndarray) -> None:
        f.seek(src.offset + 4 * i * block_rows * m)
        block.tofile(f)
        f.flush()
        _block_marker(root, i).touch()  # after its bytes: a kill never leaves a marked block unwritten

    # the next block is computed, and the last one written, while this one's statistics are taken
    with open(path, "r+b") as f, ThreadPoolExecutor(1) as computer, ThreadPoolExecutor(1) as writer:
        ahead = {todo[0]: computer.submit(compute, *rows_of(todo[0]))} if todo else {}
        pending = None
        try:
            for i in range(n_blocks):
                start, stop = rows_of(i)
                done = i not in ahead
                if done:
                    block = src._read(start, stop)
                else:
                    block = np.ascontiguousarray(ahead.pop(i).result(), dtype=np.float32)
                    if block.shape != (stop - start, m):
                        raise ArtifactError(f"influence block {i}: shape {block.shape}, expected {(stop - start, m)}")
                    nxt = todo.index(i) + 1
                    if nxt < len(todo):
                        ahead[todo[nxt]] = computer.submit(compute, *rows_of(todo[nxt]))
                    if pending is not None:
                        pending.result()
                    pending = writer.submit(write, f, i, block)
                moments.add(block)
                if nonfinite[0] < 0 and not np.isfinite(block).all():
                    r, c = np.argwhere(~np.isfinite(block))[0]
                    nonfinite = np.array([start + r, c])
                lo, hi = np.searchsorted(sample_idx, [start, stop])
                sample[lo:hi] = block[sample_idx[lo:hi] - start]
                if on_block:
                    on_block(i, n_blocks, done)
        finally:
            if pending is not None:
                pending.result()
    mean, std, constant = moments.result()
    tmp = root / "stats.tmp.npz"
    np.savez(
        tmp,
        n=n,
        mean=mean,
        std=std,
        constant=constant,
        lo=moments.lo,
        hi=moments.hi,
        sample_idx=sample_idx,
        sample=sample,
        nonfinite=nonfinite,
    )
    tmp.replace(root / STATS_NPZ)
    return len(todo)


def task_stats_table(s: dict[str, np.ndarray], tasks: list[str]) -> pd.DataFrame:
    """Returns per-task statistics of the raw and column-normalised scores, from the pass's statistics.

    Moments, min and max are exact (combined from the column moments); the
    99th percentiles are over the evenly spaced sample rows (all rows up to
    16,384 rows; linear interpolation, as SQL's quantile_cont).
    """
    n = float(s["n"])
    labels = np.asarray(tasks)
    out = []
    for t in sorted(set(tasks)):
        cols = np.flatnonzero(labels == t)
        mean, std, lo, hi = s["mean"][cols], s["std"][cols], s["lo"][cols], s["hi"][cols]
        total = n * len(cols)
        raw_mean = mean.mean()
        m2 = (std**2 * (n - 1)).sum() + (n * (mean - raw_mean) ** 2).sum()
        kept = cols[~s["constant"][cols]]
        nk = len(kept)
        sample = s["sample"][:, cols].astype(np.float64)
        zs = zscore(s["sample"][:, kept], s["mean"][kept], s["std"][kept]) if nk else np.empty((0, 0))
        out.append(
            {
                "task": t,
                "n_val": len(cols),
                "raw_mean": raw_mean,
                "raw_std": np.sqrt(m2 / (total - 1)) if total > 1 else None,
                "raw_min": lo.min(),
                "raw_max": hi.max(),
                "raw_p99": np.quantile(sample, 0.99),
                "z_mean": 0.0 if nk else None,
                "z_std": np.sqrt(nk * (n - 1) / (nk * n - 1)) if nk and nk * n > 1 else None,
                "z_max": ((s["hi"][kept] - s["mean"][kept]) / s["std"][kept]).max() if nk else None,
                "z_p99": float(np.quantile(zs.astype(np.float64), 0.99)) if nk else None,
            }
        )
    return pd.DataFrame(out)


def save_influence_tables(root: Path, train: pd.DataFrame, val: pd.DataFrame, ckpts: pd.DataFrame) -> Path:
    """Writes the example, checkpoint, column and task statistics tables (DuckDB); returns the database path.

    The statistics come from `stats.npz`, which the pass that wrote the matrix
    computed: nothing here reads the N*M scores again.
    """
    z = load_stats(root)
    cols = pd.DataFrame(
        {
            "val_idx": np.arange(len(z["mean"])),
            "mean": z["mean"],
            "std": z["std"],
            "constant": z["constant"],
            "min": z["lo"],
            "max": z["hi"],
        }
    )
    tasks = task_stats_table(z, val["task"].tolist())
    path = influence_db_path(root)
    if path.exists():
        path.unlink()
    con = duckdb.connect(str(path))
    try:
        for name, df in ((T_TRAIN, train), (T_VAL, val), (T_CKPT, ckpts), (T_COLSTATS, cols), (T_TASKSTATS, tasks)):
            con.register("df_view", df)
            con.execute(f"CREATE TABLE {name} AS SELECT * FROM df_view")
            con.unregister("df_view")
    finally:
        con.close()
    return path


def save_influence(root: Path, A: np.ndarray, train: pd.DataFrame, val: pd.DataFrame, ckpts: pd.DataFrame) -> Path:
    """Writes a whole in-memory matrix and its tables (small stores, tests); returns the database path."""
    write_influence_blocks(root, A.shape[0], A.shape[1], lambda a, b: A[a:b])
    return save_influence_tables(root, train, val, ckpts)


def _quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


class ScoreStream:
    """The store's scores as a long Arrow stream (train_idx, val_idx, score) that DuckDB scans in place of a table.

    Each scan asks for a new stream (`__arrow_c_stream__`, the Arrow PyCapsule
    protocol), which reads the matrix file block by block: `score` a block's
    bytes, `train_idx` run-end encoded (one run of M per row), `val_idx` one
    0..M-1 pattern shared by every block. No copy of the scores is written, and
    a query holds a few blocks of rows at a time, whatever the store's size.
    """

    SCHEMA = pa.schema(
        [("train_idx", pa.run_end_encoded(pa.int32(), pa.int32())), ("val_idx", pa.int32()), ("score", pa.float32())]
    )

    def __init__(self, root: Path, rows: int = BLOCK_ROWS):
        self.matrix, self.rows, self.pattern = StoredMatrix(root), rows, None

    def batches(self):
        """Yields the record batches of one scan, in row order."""
        n, m = self.matrix.shape
        if self.pattern is None:
            self.pattern = pa.array(np.tile(np.arange(m, dtype=np.int32), min(self.rows, n)))
        for start, block in self.matrix.blocks(self.rows):
            b = len(block)
            train = pa.RunEndEncodedArray.from_arrays(
                pa.array(np.arange(m, (b + 1) * m, m, dtype=np.int32)),
                pa.array(np.arange(start, start + b, dtype=np.int32)),
            )
            yield pa.record_batch([train, self.pattern.slice(0, b * m), pa.array(block.reshape(-1))], schema=self.SCHEMA)

    def __arrow_c_stream__(self, requested_schema=None):
        return pa.RecordBatchReader.from_batches(self.SCHEMA, self.batches()).__arrow_c_stream__(requested_schema)


class TaskScoreStream(ScoreStream):
    """`task_influence(train_idx, task, score, z)` as an Arrow stream: per pool row and task, the mean of the row's
    raw scores over the task's validation columns and of their z-scores (constant columns left out, as SQL's avg
    leaves out their NULL z), computed block by block from the matrix (N x T rows, not N x M)."""

    SCHEMA = pa.schema([("train_idx", pa.int32()), ("task", pa.string()), ("score", pa.float64()), ("z", pa.float64())])

    def __init__(self, root: Path, rows: int = BLOCK_ROWS):
        super().__init__(root, rows)
        self.root, self.tasks = Path(root), None

    def _weights(self) -> None:
        """Sets, on the first scan, the (M, T) weights whose product with a block gives the task means."""
        con = duckdb.connect(str(influence_db_path(self.root)), read_only=True)
        try:
            labels = con.sql(f"SELECT task FROM {T_VAL} ORDER BY idx").df()["task"].to_numpy()
        finally:
            con.close()
        mean, std, constant = self.matrix.column_stats()
        self.tasks = sorted(set(labels.tolist()))
        m = len(labels)
        self.raw = np.zeros((m, len(self.tasks)))  # block @ raw: per task, the mean score
        self.zw = np.zeros((m, len(self.tasks)))  # block @ zw - zb: per task, the mean z-score
        self.zb = np.zeros(len(self.tasks))
        for i, t in enumerate(self.tasks):
            cols = np.flatnonzero(labels == t)
            self.raw[cols, i] = 1.0 / len(cols)
            live = cols[~constant[cols]]
            if len(live):
                self.zw[live, i] = 1.0 / (std[live] * len(live))
                self.zb[i] = (mean[live] / std[live]).sum() / len(live)
            else:
                self.zb[i] = np.nan  # no z-score: NULL
        self.task_names = pa.array(self.tasks)

    def batches(self):
        if self.tasks is None:
            self._weights()
        t = len(self.tasks)
        for start, block in self.matrix.blocks(self.rows):
            b = block.astype(np.float64)
            z = b @ self.zw - self.zb
            yield pa.record_batch(
                [
                    pa.array(np.repeat(np.arange(start, start + len(b), dtype=np.int32), t)),
                    pa.DictionaryArray.from_arrays(pa.array(np.tile(np.arange(t, dtype=np.int32), len(b))),
                                                   self.task_names).cast(pa.string()),
                    pa.array((b @ self.raw).reshape(-1)),
                    pa.array(z.reshape(-1), mask=np.isnan(z).reshape(-1)),
                ],
                schema=self.SCHEMA,
            )


def attach_influence(con: duckdb.DuckDBPyConnection, root: Path) -> duckdb.DuckDBPyConnection:
    """Adds a store's tables, and the views over every score (`SCORE_VIEW_NAMES`), to a DuckDB session.

    Temp views and a registered Arrow stream (`ScoreStream`): nothing is written.
    """
    db = influence_db_path(root)
    if not db.exists():
        raise ArtifactError(f"influence store not found: {db}")
    con.execute(f"ATTACH {_quote(str(db))} AS influence_tables (READ_ONLY)")
    for t in (T_TRAIN, T_VAL, T_CKPT, T_COLSTATS, T_TASKSTATS):
        con.execute(f"CREATE TEMP VIEW {t} AS SELECT * FROM influence_tables.{t}")
    con.register(T_INFLUENCE, ScoreStream(root))
    con.register("task_influence", TaskScoreStream(root))
    for sql in SCORE_VIEWS:
        con.execute(sql)
    return con


# DuckDB's memory for one session (it spills big joins and aggregates to disk beyond it); its default, 80% of
# RAM, would let a 1e9-score query crowd out the selection that follows.
DUCKDB_MEMORY = os.environ.get("BIDSFLOW_DUCKDB_MEMORY", "4GB")


def duckdb_session() -> duckdb.DuckDBPyConnection:
    """Returns an in-memory DuckDB session with bidsflow's memory limit."""
    return duckdb.connect(config={"memory_limit": DUCKDB_MEMORY})


def open_influence(root: Path) -> duckdb.DuckDBPyConnection:
    """Returns a DuckDB session over a published influence store (read-only): its tables and score views."""
    return attach_influence(duckdb_session(), root)


def read_influence_matrix(root: Path, rows: slice | None = None) -> np.ndarray:
    """Returns A (or a row range of it) as float32 (small stores: selection streams it instead)."""
    src = StoredMatrix(root)
    start, stop, _ = (rows or slice(0, src.shape[0])).indices(src.shape[0])
    return src._read(start, stop)


def read_influence_rows(root: Path, rows: np.ndarray) -> np.ndarray:
    """Returns A[rows] (in the order given) as float32, reading only those rows (or the blocks that hold them)."""
    return StoredMatrix(root).rows(rows)


def influence_matrix_array(root: Path) -> StoredMatrix:
    """Returns the on-disk matrix as a MatrixSource (row blocks, rows, stored statistics)."""
    return StoredMatrix(root)


def load_column_stats(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns per-column (mean, sample std, is-constant) over the pool, as the pass that wrote the matrix did."""
    return StoredMatrix(root).column_stats()


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
    train, val = load_influence_tables(root)
    return read_influence_matrix(root), train, val
