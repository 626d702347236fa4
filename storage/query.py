"""SQL over a run's stores: its influence database and its selections, in one DuckDB session."""

from __future__ import annotations

from pathlib import Path

import duckdb

from bidsml.errors import ArtifactError
from storage.influence_store import attach_influence, duckdb_session
from storage.names import SELECTION_PARQUET


def _quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def open_run(record: dict) -> duckdb.DuckDBPyConnection:
    """Returns an in-memory DuckDB session with the run's influence store attached read-only.

    The views over every score read the store's matrix in place (`storage.influence_store.ScoreStream`).

    Tables and views of the influence store resolve unqualified; temp views
    `selections` (every selection of the run, with method and budget) and
    `selection_composition` (counts by source and most-influenced task) are added.
    """
    infl = record["refs"].get("influence")
    if not infl:
        raise ArtifactError(f"run {record.get('run_id')} has no influence store")
    con = attach_influence(duckdb_session(), Path(next(iter(infl.values()))["uri"]))
    parts = []
    for ref in record["refs"].get("selection", {}).values():
        meta = ref.get("meta", {})
        pq = Path(ref["uri"]) / SELECTION_PARQUET
        if pq.exists():
            parts.append(
                f"SELECT {_quote(meta['method'])} AS method, {float(meta['budget'])} AS budget, * "
                f"FROM read_parquet({_quote(str(pq))})"
            )
    if parts:
        con.execute("CREATE TEMP VIEW selections AS " + " UNION ALL ".join(parts))
        con.execute(
            """CREATE TEMP VIEW selection_composition AS
            SELECT method, budget, source, top_task, count(*) AS n
            FROM selections GROUP BY ALL ORDER BY method, budget, source, top_task"""
        )
    return con
