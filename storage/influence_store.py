"""DuckDB influence store: one immutable database file per influence run.

Tables: train_examples(idx, id, source, n_tokens), val_examples(idx, id, task,
subtask, capability), checkpoints(c, step, mean_lr, weight) and
influence(train_idx, val_idx, score) in long format; view task_influence
gives per (train row, task) mean scores. The file is written, closed, then
published (a DuckDB writer's lock blocks even read-only openers); readers
open it read-only.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from bidsml.errors import ArtifactError
from storage.names import INFLUENCE_DB, T_CKPT, T_INFLUENCE, T_TRAIN, T_VAL

# Views users query (`bidsflow query RUN "SQL"`); normalised = z-score of a
# validation column over all training rows (sample std), as BIDS does.
VIEWS = [
    f"""CREATE VIEW normalized_influence AS
    SELECT train_idx, val_idx, score,
           (score - avg(score) OVER w) / nullif(stddev_samp(score) OVER w, 0) AS z
    FROM {T_INFLUENCE} WINDOW w AS (PARTITION BY val_idx)""",
    f"""CREATE VIEW task_influence AS
    SELECT n.train_idx, v.task, avg(n.score) AS score, avg(n.z) AS z
    FROM normalized_influence n JOIN {T_VAL} v ON v.idx = n.val_idx
    GROUP BY n.train_idx, v.task""",
    f"""CREATE VIEW task_stats AS
    SELECT v.task, count(DISTINCT n.val_idx) AS n_val,
           avg(n.score) AS raw_mean, stddev_samp(n.score) AS raw_std, min(n.score) AS raw_min, max(n.score) AS raw_max,
           quantile_cont(n.score, 0.99) AS raw_p99, avg(n.z) AS z_mean, stddev_samp(n.z) AS z_std,
           max(n.z) AS z_max, quantile_cont(n.z, 0.99) AS z_p99
    FROM normalized_influence n JOIN {T_VAL} v ON v.idx = n.val_idx
    GROUP BY v.task ORDER BY v.task""",
    f"""CREATE VIEW top_train_for_val AS
    SELECT i.val_idx, v.id AS val_id, v.task, i.train_idx, t.id AS train_id, t.source, i.score,
           row_number() OVER (PARTITION BY i.val_idx ORDER BY i.score DESC, i.train_idx) AS rank
    FROM {T_INFLUENCE} i JOIN {T_TRAIN} t ON t.idx = i.train_idx JOIN {T_VAL} v ON v.idx = i.val_idx""",
    f"""CREATE VIEW top_train_for_task AS
    SELECT ti.task, ti.train_idx, t.id AS train_id, t.source, ti.score, ti.z,
           row_number() OVER (PARTITION BY ti.task ORDER BY ti.score DESC, ti.train_idx) AS rank
    FROM task_influence ti JOIN {T_TRAIN} t ON t.idx = ti.train_idx""",
]


def influence_db_path(root: Path) -> Path:
    return Path(root) / INFLUENCE_DB


def save_influence(root: Path, A: np.ndarray, train: pd.DataFrame, val: pd.DataFrame, ckpts: pd.DataFrame) -> Path:
    """Writes the influence database into `root` and returns its path."""
    path = influence_db_path(root)
    if path.exists():
        path.unlink()
    N, M = A.shape
    long = pd.DataFrame(
        {
            "train_idx": np.repeat(np.arange(N, dtype=np.int32), M),
            "val_idx": np.tile(np.arange(M, dtype=np.int32), N),
            "score": A.astype(np.float32).ravel(),
        }
    )
    con = duckdb.connect(str(path))
    try:
        for name, df in ((T_TRAIN, train), (T_VAL, val), (T_CKPT, ckpts), (T_INFLUENCE, long)):
            con.register("df_view", df)
            con.execute(f"CREATE TABLE {name} AS SELECT * FROM df_view")
            con.unregister("df_view")
        for sql in VIEWS:
            con.execute(sql)
    finally:
        con.close()
    return path


def open_influence(root: Path) -> duckdb.DuckDBPyConnection:
    """Returns a read-only connection to a published influence database."""
    path = influence_db_path(root)
    if not path.exists():
        raise ArtifactError(f"influence store not found: {path}")
    return duckdb.connect(str(path), read_only=True)


def load_influence(root: Path) -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame]:
    """Returns (A (N x M) float32, train_examples, val_examples) from the store."""
    con = open_influence(root)
    try:
        train = con.sql(f"SELECT * FROM {T_TRAIN} ORDER BY idx").df()
        val = con.sql(f"SELECT * FROM {T_VAL} ORDER BY idx").df()
        cols = con.sql(f"SELECT train_idx, val_idx, score FROM {T_INFLUENCE}").fetchnumpy()
    finally:
        con.close()
    A = np.zeros((len(train), len(val)), dtype=np.float32)
    A[cols["train_idx"], cols["val_idx"]] = cols["score"]
    return A, train, val
