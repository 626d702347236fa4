"""Prefect tasks, one module per step: cache policy, artifacts, lineage. Thin glue over bidsml/ and storage/."""
