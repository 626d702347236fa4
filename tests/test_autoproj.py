"""proj_dim auto: the streamed exact and projected task-mean influence, and the choice of k."""

import numpy as np
import pytest

from bidsml.gradients.autoproj import candidate_table, choose_dim, store_bytes, task_mean_influence
from bidsml.data.examples import tokenize_all
from bidsml.errors import FeatureError
from bidsml.gradients.features import AdamTransform, CheckpointState, compute_features, lora_linears
from bidsml.gradients.fidelity import exact_influence
from bidsml.gradients.projection import make_projector
from tests.conftest import adam_states, make_examples, make_lora_model


def _states(model, seed=3):
    return adam_states(model, seed)


def test_streamed_task_means_equal_the_full_gradient_path(tokenizer):
    """Exact: the task mean of the full-gradient cosines; projected: the task mean of the stored features' cosines."""
    model = make_lora_model()
    items, _ = tokenize_all(tokenizer, make_examples(14), 64)
    train, val = items[:9], items[9:]
    tasks = ["b", "a", "b", "a", "a"]
    ck = CheckpointState(None, AdamTransform(_states(model)))
    shapes = {n: tuple(m.weight.shape) for n, m in lora_linears(model)}
    projectors = {k: make_projector("sjlt", k, 0, shapes) for k in (16, 256)}
    names, exact, projected = task_mean_influence(model, train, val, tasks, ck, projectors, tokenizer.pad_token_id, 200)
    assert names == ["a", "b"]
    full = exact_influence(model, train, val, [ck], [1.0], tokenizer.pad_token_id, 4096)
    cols = np.asarray(tasks)
    want = np.stack([full[:, cols == t].mean(1) for t in names], 1)
    np.testing.assert_allclose(exact, want, atol=1e-6)
    for k, p in projectors.items():
        t, _ = compute_features(model, train, p, tokenizer.pad_token_id, ck.transform, 4096)
        v, _ = compute_features(model, val, p, tokenizer.pad_token_id, None, 4096)
        cos = (t.double() @ v.double().T).numpy()
        np.testing.assert_allclose(projected[k], np.stack([cos[:, cols == n].mean(1) for n in names], 1), atol=1e-5)
    rows = candidate_table(names, exact, projected)
    assert [r["k"] for r in rows] == [16, 256]
    assert rows[1]["worst_task_fidelity"] == min(rows[1]["fidelity a"], rows[1]["fidelity b"])


def _rows(*worst):
    return [{"k": 2**10 * 2**i, "worst_task_fidelity": w} for i, w in enumerate(worst)]


def size_of(n_rows=1000, ckpts=2):
    return lambda k: store_bytes(n_rows, k, ckpts)


def test_the_smallest_k_reaching_min_fidelity_is_chosen():
    choice = choose_dim(_rows(0.5, 0.93, 0.96, 0.99), 0.95, 10**6, size_of(), 50, "sjlt")
    assert (choice.k, choice.projector, choice.warning) == (4096, "sjlt", "")
    assert "0.960 >= 0.95" in choice.reason
    assert choice.store_gb == 0.01639  # 16,392,000 B: 1000 rows x 2 checkpoints x (2 x 4096 + 4) bytes


def test_no_candidate_passing_falls_back_to_exact_when_it_fits_else_warns():
    choice = choose_dim(_rows(0.5, 0.9), 0.95, 50_000, size_of(), 50, "sjlt")
    assert (choice.k, choice.projector) == (50_000, "exact") and "best 0.900 at k=2048" in choice.reason
    # exact does not fit 0.1 GB (1000 x 2 x 1e6 x 2 B = 4 GB): the most faithful k that fits, with a warning
    choice = choose_dim(_rows(0.5, 0.9), 0.95, 10**6, size_of(), 0.1, "sjlt")
    assert choice.k == 2048 and "features.max_store_gb" in choice.warning and "0.900" in choice.warning


def test_a_passing_k_over_the_store_budget_stops_naming_the_option():
    with pytest.raises(FeatureError, match=r"features.max_store_gb = 0.001.*features.min_fidelity"):
        choose_dim(_rows(0.5, 0.99), 0.95, 10**6, size_of(), 0.001, "sjlt")


RECIPE = __import__("pathlib").Path(__file__).parents[1] / "recipes" / "tiny.yaml"


@pytest.mark.e2e  # the data, warmup, projection and features steps as Prefect flows
def test_auto_k_through_the_steps_records_its_choice_and_the_features_use_it(tmp_path):
    """Tiny model, rank-16 LoRA on layer 1 (D > 1,024): candidates measured, the choice consistent with them,
    features at k; warmup and features from the frozen trunk."""
    from bidsml.config import load_recipe
    from flows.step_flows import STEP_FLOWS as F
    from storage.gradients import read_features

    recipe = load_recipe(RECIPE).with_overrides(
        {
            "run_root": str(tmp_path),
            "lora.r": 16,
            "lora.layers": [1],  # the warmup (2 epochs) and the features run from the frozen trunk
            "features.proj_dim": "auto",
            "features.fidelity_rows": 24,
            "features.min_fidelity": 0.9,  # well below the first candidate's measured 0.96: a fixed outcome
        }
    )
    data = F["data"](recipe)
    warm = F["warmup"](recipe, inputs={"data": data})
    proj = F["projection"](recipe, inputs={"data": data, "warmup": warm})
    m = proj.meta
    assert m["mode"] == "auto" and m["D"] > 1024
    ks = [r["k"] for r in m["candidates"]]
    assert ks == [k for k in (2**j for j in range(10, 18)) if k < m["D"]]
    # measured here: worst-task fidelity 0.96 / 0.98 / 0.98 at k = 1,024 / 2,048 / 4,096; at 0.9 the first passes
    assert m["candidates"][0]["worst_task_fidelity"] >= 0.9 and (m["k"], m["projector"]) == (1024, "sjlt")
    # a bar no candidate reaches (the best is < 0.999): the exact gradients, k = D
    strict = F["projection"](
        recipe.with_overrides({"features.min_fidelity": 0.999}), inputs={"data": data, "warmup": warm}
    )
    assert max(r["worst_task_fidelity"] for r in strict.meta["candidates"]) < 0.999
    assert (strict.meta["k"], strict.meta["projector"]) == (m["D"], "exact")
    assert m["store_gb"] > 0 and "reason" in m and (proj.path / "fidelity_by_k.png").exists()
    feats = F["features"](recipe, inputs={"data": data, "warmup": warm, "projection": proj})
    assert feats.meta["dim"] == m["k"] and read_features(feats.path, "val", 0).shape == (4, m["k"])
    assert feats.meta["trunk"].startswith("layers 0-0 run once per micro-batch for all checkpoints")
    assert list((tmp_path / "trunk").glob("train-*.npy"))  # the warmup's rows' trunk, saved

    # a fixed k is measured at that k alone (the fidelity check the diagnostics report, computed once here); a
    # store over the budget stops before any gradient or feature
    from storage.fidelity_sample import load_measurement

    fixed = F["projection"](recipe.with_overrides({"features.proj_dim": 32}), inputs={"data": data, "warmup": warm})
    assert (fixed.meta["k"], fixed.meta["mode"]) == (32, "fixed")
    assert [r["k"] for r in fixed.meta["candidates"]] == [32] and fixed.meta["worst_task_fidelity"] < 1
    sample = load_measurement(fixed.path / "fidelity_sample.npz")
    assert list(sample["projected"]) == [32] and sample["exact"].shape == (24, len(sample["tasks"]))
    # the exact side does not depend on k: the auto run measured the same values
    np.testing.assert_array_equal(load_measurement(proj.path / "fidelity_sample.npz")["exact"], sample["exact"])
    small = recipe.with_overrides({"features.proj_dim": 4096, "features.max_store_gb": 1e-4})
    with pytest.raises(Exception, match=r"features store: [0-9]+ rows x k=4,096 x 2 checkpoint.*features.max_store_gb"):
        F["projection"](small, inputs={"data": data, "warmup": warm})
