"""The fidelity sample's measurement: exact and projected task-mean influence of a few seeded pool rows.

The projection step computes it (the only exact gradients of a run) and the
diagnostics step reports it at the features' k.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def save_measurement(m: dict, path: Path) -> None:
    """Writes rows (pool indices), tasks, columns (validation columns per task), exact (rows x tasks) and
    {k: projected (rows x tasks)} as an .npz."""
    ks = sorted(m["projected"])
    np.savez(
        path,
        rows=m["rows"],
        tasks=np.asarray(m["tasks"]),
        columns=np.asarray(m["columns"]),
        exact=m["exact"],
        ks=np.asarray(ks),
        projected=np.stack([m["projected"][k] for k in ks]),
    )


def load_measurement(path: Path) -> dict:
    """Returns what `save_measurement` wrote."""
    z = np.load(path)
    return {
        "rows": z["rows"],
        "tasks": z["tasks"].tolist(),
        "columns": z["columns"].tolist(),
        "exact": z["exact"],
        "projected": {int(k): p for k, p in zip(z["ks"], z["projected"])},
    }
