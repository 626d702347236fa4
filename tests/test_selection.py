"""Selection methods: BIDS equals the naive loop of SPEC.md exactly; baselines; bad input."""

import numpy as np
import pytest

from bidsml.errors import SelectionError
from bidsml.selection import bids_iterate, bids_naive, normalize_columns
from bidsml.selectors import METHODS, PoolFields, SelectorInputs, run_selector, select
from bidsml.selectors.rds_plus import round_robin_top


@pytest.mark.parametrize("seed", range(150))
def test_fast_bids_equals_naive_loop(seed):
    rng = np.random.default_rng(seed)
    N, M = rng.integers(2, 60), rng.integers(1, 8)
    kind = seed % 3
    if kind == 0:
        Z = rng.normal(size=(N, M))
    elif kind == 1:  # heavy ties: few distinct values
        Z = rng.integers(0, 3, size=(N, M)).astype(float)
    else:  # ties and duplicate rows
        Z = np.repeat(rng.integers(0, 4, size=(N // 2 + 1, M)).astype(float), 2, axis=0)[:N]
    k = int(rng.integers(1, N + 1))
    expected = bids_naive(Z, k).tolist()
    assert bids_iterate(Z, k).tolist() == expected
    # tiny column blocks exercise the refill and tie-past-the-block paths
    assert (
        bids_iterate(Z.astype(np.float32), k, block=int(rng.integers(1, 4))).tolist()
        == bids_naive(Z.astype(np.float32), k).tolist()
    )


def test_bids_with_constant_column_drops_it_and_matches_naive():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(40, 5))
    A[:, 2] = 0.7
    Z, kept = normalize_columns(A)
    assert kept.tolist() == [0, 1, 3, 4]
    np.testing.assert_allclose(Z.astype(np.float64).std(axis=0, ddof=1), 1.0, rtol=1e-5)
    got = select("bids", A, ["t"] * 5, 12)
    assert got.tolist() == bids_naive(Z, 12).tolist()


def test_bids_balances_when_one_task_has_larger_influence():
    rng = np.random.default_rng(1)
    A = rng.normal(size=(200, 4))
    A[:, :2] *= 10  # task "big" intrinsically gets larger influence
    tasks = ["big", "big", "small", "small"]
    less = select("less", A, tasks, 20)
    bids = select("bids", A, tasks, 20)
    Z, _ = normalize_columns(A)
    top_less = (Z[less][:, :2].mean(1) > Z[less][:, 2:].mean(1)).mean()
    top_bids = (Z[bids][:, :2].mean(1) > Z[bids][:, 2:].mean(1)).mean()
    assert top_less >= 0.9  # LESS is dominated by the big task
    assert 0.3 <= top_bids <= 0.7  # BIDS is balanced


def test_less_groups_subtasks_by_label_not_position():
    A = np.array([[1.0, 0.0, 1.0, 0.0], [0.0, 0.9, 0.0, 0.9], [0.2, 0.2, 0.2, 0.2]])
    # interleaved labels: a, b, a, b -> row 0 mean(a)=1, row 1 mean(b)=0.9
    assert select("less", A, ["a", "b", "a", "b"], 2).tolist() == [0, 1]


def test_ties_go_to_lower_index():
    A = np.ones((5, 2))
    for m in ["less", "sum", "instance-max", "bids-no-norm"]:
        assert select(m, A, ["a", "b"], 3).tolist() == [0, 1, 2], m


def test_random_is_seeded_and_all_methods_return_k_distinct_rows():
    A = np.random.default_rng(2).normal(size=(50, 6))
    tasks = ["a", "a", "b", "b", "c", "c"]
    assert select("random", A, tasks, 10, seed=3).tolist() == select("random", A, tasks, 10, seed=3).tolist()
    rng = np.random.default_rng(4)
    reps = {
        f"{split}_{p}": rng.normal(size=(n, 8))
        for split, n in (("train", 50), ("val", 6))
        for p in ("mean", "weighted")
    }
    reps["train_quality"] = -rng.random(50)
    pool = PoolFields(
        sources=[f"s{i % 4}" for i in range(50)], planted_for=[("t" if i % 7 == 0 else None) for i in range(50)]
    )
    for m, sel in METHODS.items():
        x = SelectorInputs(
            tasks=tasks,
            influence=A,
            representations=reps if "representations" in sel.needs else {},
            pool=pool if "pool" in sel.needs else None,
            texts={
                "train": [f"row {i} word{i % 5} topic{i % 3}" for i in range(50)],
                "val": [f"word{j} topic{j % 3}" for j in range(6)],
            }
            if "text" in sel.needs
            else None,
        )
        if "degradation" in sel.needs:  # paser: the pruned model's per-row divergence
            x.degradation = {"jsd_sum": rng.random(50), "n_tokens": np.full(50, 20), "output_chars": np.full(50, 80)}
        if m == "kmq-iterative":  # one round of three; the pipeline fine-tunes between rounds
            x.extra = {"round": 0}
            assert len(run_selector(m, x, 9)) == 3  # round 0 of 3: a third of the 9
            continue
        rows = run_selector(m, x, 0.2)
        assert len(rows) == 10 and len(set(rows.tolist())) == 10, m


def test_representation_selectors_refuse_to_run_without_representations():
    A = np.random.default_rng(2).normal(size=(20, 2))
    for m in ("rds", "rds-plus"):
        with pytest.raises(SelectionError, match="needs the representations"):
            select(m, A, ["a", "b"], 5)


def test_rds_plus_takes_turns_over_tasks_by_mean_cosine():
    # train rows 0-3 are close to task "a"'s validation examples, rows 4-7 to task "b"'s
    val = np.array([[1.0, 0, 0], [0.9, 0.1, 0], [0, 1.0, 0]])
    val /= np.linalg.norm(val, axis=1, keepdims=True)
    train = np.array(
        [
            [1, 0, 0],
            [0.9, 0.2, 0],
            [0.8, 0.3, 0],
            [0.7, 0.4, 0.1],
            [0, 1, 0],
            [0.1, 0.9, 0],
            [0.2, 0.8, 0],
            [0.3, 0.7, 0.1],
        ],
        dtype=float,
    )
    train /= np.linalg.norm(train, axis=1, keepdims=True)
    x = SelectorInputs(tasks=["a", "a", "b"], representations={"train_weighted": train, "val_weighted": val})
    rows = run_selector("rds-plus", x, 4).tolist()
    scores = train @ val.T
    best_a = np.argsort(-scores[:, :2].mean(axis=1), kind="stable")[:2].tolist()
    best_b = np.argsort(-scores[:, 2], kind="stable")[:2].tolist()
    assert rows == [best_a[0], best_b[0], best_a[1], best_b[1]]  # a, b, a, b
    assert set(rows[::2]) <= {0, 1, 2, 3} and set(rows[1::2]) <= {4, 5, 6, 7}


def test_round_robin_skips_rows_already_taken_and_breaks_ties_by_row():
    S = np.array([[1.0, 1.0], [0.5, 0.9], [0.5, 0.1]])
    assert round_robin_top(S, 3).tolist() == [0, 1, 2]


def test_bad_input_errors():
    A = np.zeros((4, 2))
    with pytest.raises(SelectionError, match="budget 0"):
        select("bids", A, ["a", "b"], 0)
    with pytest.raises(SelectionError, match="the pool has 4"):
        select("bids", A, ["a", "b"], 5)
    with pytest.raises(SelectionError, match="3 task labels for 2 validation columns"):
        select("less", A, ["a", "b", "c"], 2)
    B = A.copy()
    B[1, 1] = np.nan
    with pytest.raises(SelectionError, match="non-finite score at row 1, column 1"):
        select("less", B, ["a", "b"], 2)
    with pytest.raises(SelectionError, match="unknown selection method 'bidz'"):
        select("bidz", A, ["a", "b"], 2)
