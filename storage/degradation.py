"""The degradation artifact: per pool row, the pruned model's JSD from the original, token and response lengths."""

from __future__ import annotations

import pandas as pd

from storage.names import DEGRADATION_PARQUET
from storage.refs import ArtifactRef


def load_degradation(ref: ArtifactRef) -> pd.DataFrame:
    """Returns one row per pool row (pool order): id, jsd_sum, jsd_mean, n_tokens, output_chars."""
    return pd.read_parquet(ref.path / DEGRADATION_PARQUET)
