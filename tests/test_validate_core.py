"""The influence check's arithmetic: which rows each arm trains on, paired intervals, verdicts, the LDS."""

import numpy as np
import pandas as pd
import pytest

from bidsml.errors import SelectionError
from bidsml.gradients.fidelity import spearman
from bidsml.validate import (
    BASE_SEED,
    arm_rows,
    lds,
    paired_difference,
    probe_label,
    seeded_difference,
    task_table,
    verdict,
)


def test_arms_take_top_bottom_random_and_removals_of_a_shared_base():
    scores = np.array([0.5, 0.9, 0.1, 0.9, -0.2, 0.3, 0.0, 0.7])
    assert arm_rows("top", scores, 8, 3, 0, 0).tolist() == [1, 3, 7]  # ties to the lower index
    assert arm_rows("bottom", scores, 8, 2, 0, 0).tolist() == [4, 6]
    r0 = arm_rows("random", None, 8, 3, 0, 0)
    assert len(set(r0.tolist())) == 3 and r0.tolist() == arm_rows("random", None, 8, 3, 0, 0).tolist()
    # removals: the same base subset (BASE_SEED) for both arms; remove-top drops the base's 2 highest rows
    base = np.sort(np.random.default_rng(BASE_SEED).choice(8, 6, replace=False))
    top_removed = arm_rows("remove-top", scores, 8, 2, 0, 6)
    highest = base[np.lexsort((np.arange(6), -scores[base]))[:2]]
    assert top_removed.tolist() == np.setdiff1d(base, highest).tolist()
    random_removed = arm_rows("remove-random", None, 8, 2, 1, 6)
    assert len(random_removed) == 4 and set(random_removed.tolist()) <= set(base.tolist())
    half = arm_rows("half", None, 9, 0, 3, 0)
    assert len(half) == 4 and half.tolist() == sorted(half.tolist())


def test_bad_k_and_base_are_refused():
    with pytest.raises(SelectionError, match="k = 0"):
        arm_rows("top", np.zeros(5), 5, 0, 0, 0)
    with pytest.raises(SelectionError, match="base subset has 3 rows"):
        arm_rows("remove-top", np.zeros(5), 5, 3, 0, 3)


def test_paired_difference_and_verdict():
    a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.5, 2.5, 3.5, 4.5])
    m, lo, hi = paired_difference(a, b)
    assert (m, lo, hi) == (-0.5, -0.5, -0.5)  # a constant difference has a zero-width interval
    assert verdict((-0.2, -0.3, -0.1), (0.2, 0.1, 0.3)) == "influence predicts the effect on t"
    assert verdict((-0.2, -0.3, 0.1), (0.2, 0.1, 0.3)) == "no evidence"
    assert verdict((-0.2, -0.3, -0.1), (0.2, -0.1, 0.3)) == "no evidence"


def test_task_table_pairs_each_arm_with_the_same_seeds_random_arm():
    idx = pd.MultiIndex.from_tuples([("t", "a"), ("t", "b"), ("t", "c")], names=["task", "id"])
    s = lambda *v: pd.Series(v, index=idx)  # noqa: E731
    nll = {
        probe_label("top", "t", 0): s(1.0, 1.0, 1.0),
        probe_label("top", "t", 1): s(1.0, 1.0, 2.0),
        probe_label("bottom", "t", 0): s(3.0, 3.0, 3.0),
        probe_label("bottom", "t", 1): s(3.0, 3.0, 4.0),
        probe_label("remove-top", "t", 0): s(2.5, 2.5, 2.5),
        probe_label("remove-top", "t", 1): s(2.5, 2.5, 2.5),
        "random#0": s(2.0, 2.0, 1.0),
        "random#1": s(2.0, 2.0, 3.0),
        "remove-random#0": s(2.0, 2.0, 2.0),
        "remove-random#1": s(2.0, 2.0, 2.0),
    }
    assert probe_label("top", "t", 1) == "top[t]#1" and probe_label("top", "t", 0) == "top[t]"
    (row,) = task_table(nll, ["t"], [0, 1])
    # seed 0: top - random = (-1, -1, 0); seed 1: (-1, -1, -1): mean -5/6
    assert row["random_nll"] == 2.0 and row["top_minus_random_nll"] == pytest.approx(-5 / 6)
    assert row["bottom_minus_random_nll"] == pytest.approx(7 / 6) and row["n_seeds"] == 2
    assert row["removal_top_minus_random_nll"] == 0.5 and row["verdict"] == "influence predicts the effect on t"
    (few,) = task_table(nll, ["t"], [0, 1], min_items=30)
    assert few["verdict"] == "too few scored items (3 < 30)" and few["removal"].startswith("too few scored items")


def test_seeded_difference_keeps_the_probe_seeds_spread_in_the_interval():
    rng = np.random.default_rng(0)
    items = rng.normal(2.0, 0.5, 50)
    b = np.stack([items, items])
    same = np.stack([items - 0.1, items - 0.1])  # both seeds: -0.1
    split = np.stack([items - 0.3, items + 0.1])  # seeds disagree: -0.3 and +0.1
    m, lo, hi = seeded_difference(same, b)
    assert (m, lo, hi) == pytest.approx((-0.1, -0.1, -0.1))
    m, lo, hi = seeded_difference(split, b)
    assert m == pytest.approx(-0.1) and lo == pytest.approx(-0.3) and hi == pytest.approx(0.1)  # seed draws only
    assert seeded_difference(items[None] - 0.2, items[None])[0] == pytest.approx(-0.2)  # one seed: items only


def test_lds_is_the_mean_per_query_spearman_across_models():
    rng = np.random.default_rng(0)
    pred = rng.normal(size=(6, 5))
    actual = pred + rng.normal(scale=0.5, size=(6, 5))
    actual[:, 4] = 1.0  # a constant query is left out
    score, lo, hi = lds(pred, actual)
    want = np.mean([spearman(pred[:, q], actual[:, q]) for q in range(4)])
    assert score == pytest.approx(want) and lo <= score <= hi
