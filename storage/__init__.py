"""Artifact storage: content-digested references, Zarr gradient store, DuckDB influence store, lineage. No Prefect."""
