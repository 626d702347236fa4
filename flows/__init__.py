"""Prefect flows: one per step, the pipeline, and the CLI entry."""

import os

# Offline machines: no telemetry (the server logs errors otherwise).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
