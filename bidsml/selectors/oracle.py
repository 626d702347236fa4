"""The oracle of the evidence experiment: every planted row (the pool's in-distribution material for the
targets), padded with random rows up to the budget. It knows what no selector is told, so it is the validity
gate: if fine-tuning on it does not beat random, no selector can show an effect in that setup.

More planted rows than the budget: an equal count per target (balanced_counts), random within a target.
"""

from __future__ import annotations

import numpy as np

from bidsml.errors import SelectionError
from bidsml.selectors.balanced import balanced_counts
from bidsml.selectors.registry import SelectorInputs, register_selector


def _check(recipe, opts) -> None:
    from bidsml.data.sources import SOURCES

    if not any(SOURCES[s.source].plants for s in recipe.data.pool):
        planted = sorted(n for n, s in SOURCES.items() if s.plants)
        raise ValueError(f"method 'oracle' needs a planted source in data.pool ({', '.join(planted)})")


@register_selector("oracle", needs=("pool",), check=_check)
def select_oracle(x: SelectorInputs, k: int, seed: int) -> np.ndarray:
    """Oracle (evidence experiment): every planted row, padded with random rows to the budget."""
    if x.pool.planted_for is None:
        raise SelectionError("method 'oracle' needs planted rows (`planted_for`) in the pool; none has one")
    target = np.asarray([t or "" for t in x.pool.planted_for])
    rng = np.random.default_rng(seed)
    planted = np.flatnonzero(target != "")
    if len(planted) >= k:
        names = sorted(set(target[planted].tolist()))
        rows = {t: np.flatnonzero(target == t) for t in names}
        counts = balanced_counts({t: len(r) for t, r in rows.items()}, k)
        return np.concatenate([rng.permutation(rows[t])[: counts[t]] for t in names])
    rest = rng.permutation(np.flatnonzero(target == ""))[: k - len(planted)]
    return np.concatenate([planted, rest])
