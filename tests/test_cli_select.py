"""`bidsflow select` on a raw matrix: output format, and bad input writes nothing."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from bidsml.selection import bids_naive, normalize_columns
from flows.cli import app


@pytest.fixture()
def inputs(tmp_path):
    A = np.random.default_rng(0).normal(size=(60, 4)).astype(np.float32)
    np.save(tmp_path / "A.npy", A)
    (tmp_path / "tasks.json").write_text(json.dumps(["a", "a", "b", "b"]))
    return tmp_path, A


def _run(tmp_path, *extra):
    return CliRunner().invoke(
        app,
        [
            "select",
            "--scores",
            str(tmp_path / "A.npy"),
            "--tasks",
            str(tmp_path / "tasks.json"),
            "--out",
            str(tmp_path / "sel.json"),
            *extra,
        ],
    )


def test_select_raw_matrix_matches_reference(inputs):
    tmp_path, A = inputs
    res = _run(tmp_path, "--method", "bids", "--budget", "0.25")
    assert res.exit_code == 0, res.output
    sel = json.loads((tmp_path / "sel.json").read_text())
    Z, _ = normalize_columns(A)
    assert sel["selected"] == bids_naive(Z, 15).tolist() and sel["k"] == 15 and sel["n"] == 60


@pytest.mark.parametrize(
    "mutate, args, message",
    [
        (
            lambda p, A: np.save(p / "A.npy", np.where(np.arange(A.size).reshape(A.shape) == 5, np.nan, A)),
            ("--method", "bids", "--budget", "5"),
            "non-finite score at row 1, column 1",
        ),
        (None, ("--method", "bids", "--budget", "0"), "budget 0"),
        (None, ("--method", "bids", "--budget", "61"), "the pool has 60"),
        (
            lambda p, A: (p / "tasks.json").write_text('["a", "b"]'),
            ("--method", "less", "--budget", "5"),
            "2 task labels for 4 validation columns",
        ),
        (
            lambda p, A: (p / "tasks.json").write_text('["a", "", "b", "b"]'),
            ("--method", "less", "--budget", "5"),
            "empty task label",
        ),
        (lambda p, A: (p / "A.npy").unlink(), ("--method", "less", "--budget", "5"), "file not found"),
    ],
)
def test_bad_input_is_named_and_nothing_is_written(inputs, mutate, args, message):
    tmp_path, A = inputs
    if mutate:
        mutate(tmp_path, A)
    res = _run(tmp_path, *args)
    assert res.exit_code == 2
    assert message in res.output.replace("\n", " ")
    assert not (tmp_path / "sel.json").exists()
