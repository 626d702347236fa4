"""The evidence experiment's measures: retrieval of planted rows per selection, the oracle gate, the headline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bidsml.config import TuningConfig, load_recipe
from bidsml.report.evidence import gate, headline, retrieval_summary, retrieval_table
from bidsml.report.experiment import compare_methods

ROOT = Path(__file__).resolve().parents[1]


def test_retrieval_counts_shares_base_rates_lift_recall_and_evenness():
    pool = ["a"] * 10 + ["b"] * 5 + [None] * 85  # base rates 0.10 and 0.05
    sels = [
        {"selection": "x@10", "method": "x", "budget": 10, "seed": 0, "planted_for": ["a"] * 5 + ["b"] * 5},
        {"selection": "x@10", "method": "x", "budget": 10, "seed": 1, "planted_for": ["a"] * 10},
        {"selection": "r@10", "method": "r", "budget": 10, "seed": 0, "planted_for": ["a"] + [None] * 9},
    ]
    t = retrieval_table(pool, sels)
    row = t[(t["method"] == "x") & (t["seed"] == 0) & (t["target"] == "b")].iloc[0]
    assert (row["share"], row["base_rate"], row["lift"], row["recall"]) == (0.5, 0.05, 10.0, 1.0)
    s = retrieval_summary(t).set_index("method")
    assert s.loc["x", "planted_share"] == pytest.approx(1.0) and s.loc["x", "base_rate"] == pytest.approx(0.15)
    # seed 0 covers both targets evenly (1.0); seed 1 misses b (0.0): the mean is 0.5
    assert s.loc["x", "evenness"] == pytest.approx(0.5)
    assert s.loc["r", "planted_share"] == pytest.approx(0.1) and s.loc["r", "evenness"] == 0.0


def _items(effects: dict[str, float], n_items=60, seeds=(0, 1, 2)) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    base = rng.normal(2.0, 0.3, n_items)
    rows = [
        {"method": "base", "seed": None, "benchmark": "t", "id": i, "nll": base[i], "score": np.nan}
        for i in range(n_items)
    ]
    for m, eff in effects.items():
        for s in seeds:
            noise = rng.normal(0, 0.01, n_items)
            rows += [
                {"method": m, "seed": s, "benchmark": "t", "id": i, "nll": base[i] + eff + noise[i], "score": np.nan}
                for i in range(n_items)
            ]
    return pd.DataFrame(rows)


def test_gate_passes_only_when_the_oracle_beats_base_and_random_with_intervals_below_zero():
    methods = ["base", "random@5", "oracle@5", "less@5", "bids@5"]
    good = _items({"random@5": -0.02, "oracle@5": -0.2, "less@5": -0.1, "bids@5": -0.12})
    table = compare_methods(good, methods, ["random@5", "less@5", "base"], metrics=("nll",), n_boot=300)
    g = gate(table, "oracle@5", "random@5")
    assert g["passed"] and g["oracle_minus_base"][0] == pytest.approx(-0.2, abs=0.01)
    bad = _items({"random@5": -0.02, "oracle@5": -0.02, "less@5": -0.02, "bids@5": -0.02})
    table_bad = compare_methods(bad, methods, ["random@5", "less@5", "base"], metrics=("nll",), n_boot=300)
    assert not gate(table_bad, "oracle@5", "random@5")["passed"]
    summary = pd.DataFrame(
        [{"method": m, "budget": 5, "planted_share": v, "base_rate": 0.2} for m, v in (("less", 0.5), ("random", 0.2))]
    )
    h = headline(table, summary, 5, lambda m, b: f"{m}@{b}")
    assert h["oracle_minus_random_nll"] == pytest.approx(-0.18, abs=0.01) and h["oracle_minus_random_nll_hi"] < 0
    assert h["bids_minus_less_worst_nll"] == pytest.approx(-0.02, abs=0.01)
    assert (h["planted_share_less"], h["planted_share_bids"], h["planted_base_rate"]) == (0.5, None, 0.2)


def test_tune_trials_score_validation_nll_and_the_experiment_takes_the_lowest(tmp_path):
    """Each trial is a cached `tune` artifact trained on the same random rows; the choice never reads scored items."""
    from flows.experiment import choose_finetune
    from flows.runner import run_step
    from tasks.registry import STEPS
    from tasks.tune import TuneParams

    recipe = (
        load_recipe(ROOT / "recipes" / "tiny.yaml")
        .with_overrides({"run_root": str(tmp_path / "runs")})
        .model_copy(update={"seeds": (0, 1)})
    )
    recipe = recipe.model_copy(update={"tuning": TuningConfig(lrs=(1e-4, 5e-2), epochs=(1,), budget=8)})
    chosen, table = choose_finetune(recipe)
    assert list(table.columns[:4]) == ["lr", "epochs", "k", "val_nll_macro"] and len(table) == 2
    assert (table["k"] == 8).all() and table["val_nll_macro"].is_monotonic_increasing
    assert chosen.finetune.lr == table["lr"].iloc[0] and chosen.finetune.epochs == 1
    assert table["val_nll_macro"].iloc[0] < table["val_nll_macro"].iloc[1]  # the two settings differ
    # a trial is a cached step: the same call gives the same artifact, a new lr a new one
    data = run_step(STEPS["data"], recipe.for_seed(0), {})
    one = run_step(STEPS["tune"], recipe.for_seed(0), {"data": data}, TuneParams(lr=1e-4, epochs=1, k=8))
    again = run_step(STEPS["tune"], recipe.for_seed(0), {"data": data}, TuneParams(lr=1e-4, epochs=1, k=8))
    assert one.path == again.path and one.meta["val_nll_macro"] in set(table["val_nll_macro"])
    with pytest.raises(ValueError, match="every lr and epoch count must be > 0"):
        TuningConfig(lrs=(0.0,))


def test_evidence_section_reports_the_gate_per_budget_and_ends_the_json_with_the_first_budgets_headline(tmp_path):
    """Two budgets, the oracle passing at the larger one only: the report says so per budget; the JSON's last line
    is the first budget's headline, with `gate_passed` true only when every budget passed."""
    from bidsml.report.experiment_report import evidence_section

    recipe = load_recipe(ROOT / "recipes" / "tiny.yaml")
    recipe = recipe.model_copy(update={"selection": recipe.selection.model_copy(update={"budgets": (5, 10)})})
    effects = {"random@5": -0.02, "oracle@5": -0.02, "less@5": -0.02, "bids@5": -0.02}
    effects |= {"random@10": -0.02, "oracle@10": -0.2, "less@10": -0.1, "bids@10": -0.12}
    items = _items(effects)
    tables = [
        compare_methods(
            items,
            ["base", f"random@{b}", f"oracle@{b}", f"less@{b}", f"bids@{b}"],
            [f"random@{b}", f"less@{b}", "base"],
            metrics=("nll",),
            n_boot=300,
        ).assign(budget=b)
        for b in (5, 10)
    ]
    table = pd.concat(tables, ignore_index=True)
    pool = ["t"] * 20 + [None] * 80
    picked = [
        {
            "selection": f"{m}@{b}",
            "method": m,
            "budget": b,
            "seed": 0,
            "planted_for": ["t"] * (b // 2) + [None] * (b - b // 2),
        }
        for m in ("random", "oracle", "less", "bids")
        for b in (5, 10)
    ]
    text = evidence_section(recipe, table, pool, picked, None, tmp_path, started=0.0)
    assert "## Validity gate at budget 5: NOT passed" in text and "## Validity gate at budget 10: passed" in text
    lines = [json.loads(x) for x in (tmp_path / "evidence.json").read_text().splitlines()]
    assert [r["budget"] for r in lines] == [10, 5]
    last = lines[-1]
    assert last["gate_passed"] is False and last["gate_passed_by_budget"] == {"5": False, "10": True}
    assert last["oracle_minus_random_nll_hi"] > 0 and lines[0]["oracle_minus_random_nll_hi"] < 0  # the gate's reason
    assert last["planted_share_bids"] == pytest.approx(0.4) and last["planted_base_rate"] == pytest.approx(0.2)
    assert (tmp_path / "retrieval.png").stat().st_size > 0


def test_holm_adjusts_step_down_and_keeps_the_order():
    from bidsml.report.evidence import holm

    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])  # 3 x 0.01; max(2 x 0.03, 1 x 0.04)
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([0.001]) == pytest.approx([0.001])


def _bpb_items(effects: dict[str, list[float]], n_items=80, benches=("a", "b")) -> pd.DataFrame:
    """Per-item bpb rows: method m in seed s shifts every item by effects[m][s] (+ small item noise)."""
    rng = np.random.default_rng(1)
    rows = []
    for bench in benches:
        base = rng.normal(1.0, 0.2, n_items)
        rows += [
            {"method": "base", "seed": None, "benchmark": bench, "id": f"{bench}{i}", "bpb": base[i]}
            for i in range(n_items)
        ]
        for m, per_seed in effects.items():
            for s, eff in enumerate(per_seed):
                noise = rng.normal(0, 0.01, n_items)
                rows += [
                    {"method": m, "seed": s, "benchmark": bench, "id": f"{bench}{i}", "bpb": base[i] + eff + noise[i]}
                    for i in range(n_items)
                ]
    return pd.DataFrame(rows)


def test_primary_comparisons_keep_seed_variance_in_the_interval_and_adjust_across_comparisons():
    from bidsml.report.evidence import primary_comparisons

    items = _bpb_items({"random@5": [0, 0, 0], "bids@5": [-0.1, -0.1, -0.1], "less@5": [-0.2, 0.0, 0.2]})
    label = lambda m, b: f"{m}@{b}"  # noqa: E731
    pairs = [("bids", "random"), ("less", "random")]
    out = primary_comparisons(items, pairs, "bpb", ("macro-average", "worst-task"), 5, label)
    assert [(r["comparison"], r["metric"]) for r in out] == [
        ("bids - random", "bpb macro-average"),
        ("bids - random", "bpb worst-task"),
        ("less - random", "bpb macro-average"),
        ("less - random", "bpb worst-task"),
    ]
    bids, less = out[0], out[2]
    assert bids["estimate"] == pytest.approx(-0.1, abs=0.005) and bids["hi"] < 0 and bids["holm_p"] < 0.05
    assert bids["per_seed"] == pytest.approx([-0.1, -0.1, -0.1], abs=0.005)
    # the effect flips between seeds: the seeds' spread is in the interval (items alone would give +-0.003)
    assert less["per_seed"] == pytest.approx([-0.2, 0.0, 0.2], abs=0.005)
    assert less["lo"] < -0.1 and less["hi"] > 0.1 and less["holm_p"] > 0.05
    assert all(r["holm_p"] >= r["p"] for r in out)


def test_an_evidence_recipe_fixes_its_comparisons_and_the_json_carries_them(tmp_path):
    from bidsml.config import parse_recipe
    from bidsml.errors import RecipeError
    from bidsml.report.experiment_report import evidence_section
    from flows.experiment import recipe_sha256

    raw = load_recipe(ROOT / "recipes" / "evidence-cpu.yaml").model_dump(mode="json")
    raw["selection"] |= {"methods": ["random", "oracle", "less", "bids"], "budgets": [5]}
    with pytest.raises(RecipeError, match="evidence.comparisons: 'bm25' is not in selection.methods"):
        parse_recipe(raw | {"evidence": {"comparisons": ["bids - bm25"], "budget": 5}})
    with pytest.raises(RecipeError, match=r"evidence.budget: 0.1 is not in selection.budgets \[5.0\]"):
        parse_recipe(raw | {"evidence": {"comparisons": ["bids - less"], "budget": 0.1}})
    with pytest.raises(RecipeError, match="write it as 'method - baseline'"):
        parse_recipe(raw | {"evidence": {"comparisons": ["bids vs less"], "budget": 5}})
    recipe = parse_recipe(raw | {"evidence": {"comparisons": ["bids - random", "bids - less"], "budget": 5}})
    items = _bpb_items({"random@5": [0] * 3, "oracle@5": [-0.3] * 3, "less@5": [-0.05] * 3, "bids@5": [-0.1] * 3})
    items["score"], items["n_choices"] = np.nan, 0
    methods = ["base", "random@5", "oracle@5", "less@5", "bids@5"]
    table = compare_methods(items, methods, ["random@5", "less@5", "oracle@5", "base"], ("bpb",), n_boot=300)
    table["budget"] = 5
    picked = [
        {"selection": f"{m}@5", "method": m, "budget": 5, "seed": 0, "planted_for": ["t"] * 5}
        for m in ("random", "oracle", "less", "bids")
    ]
    sha = recipe_sha256(recipe)
    text = evidence_section(
        recipe,
        table,
        ["t"] * 20 + [None] * 80,
        picked,
        None,
        tmp_path,
        0.0,
        items=items,
        recipe_sha256=sha,
        seeds_independent=True,
        selections=[],
    )
    assert "## Primary comparisons (fixed in the recipe before the run), budget 5" in text and sha in text
    assert text.index("Primary comparisons") < text.index("Validity gate")
    last = json.loads((tmp_path / "evidence.json").read_text().splitlines()[-1])
    assert [p["comparison"] for p in last["primary"]] == ["bids - random"] * 2 + ["bids - less"] * 2
    assert last["seeds_independent"] is True and last["recipe_sha256"] == sha and len(sha) == 64
    assert last["gate_passed"] is True and last["oracle_minus_base_bpb_hi"] < 0
    assert last["bids_minus_oracle_bpb"] == pytest.approx(0.2, abs=0.01)
    assert (
        last["bids_minus_oracle"]["estimate"] == last["bids_minus_oracle_bpb"]
        and last["bids_minus_oracle"]["metric"] == "bpb"
    )
    assert set(last) >= {"bm25_minus_random", "bids_minus_bm25", "bids_minus_rds_plus", "kmq_k", "encoder", "proxies"}
    forms = recipe.evaluation.formulation
    assert last["formulation"] == {
        b: forms.get(b, "mc" if b in ("mmlu", "arc_challenge") else "generate") for b in recipe.evaluation.benchmarks
    }
    assert recipe_sha256(recipe.with_overrides({"seed": 7})) != sha


def test_validate_probes_train_with_the_setting_the_tuning_grid_picks_at_their_k(tmp_path):
    """A probe trains k rows: its lr and epochs are chosen by tune steps at k, not the run's budget's setting."""
    from flows.validate import probe_settings

    recipe = load_recipe(ROOT / "recipes" / "tiny.yaml").with_overrides({"run_root": str(tmp_path / "runs")})
    assert probe_settings(recipe, 8) == (recipe, None)  # no grid: the run's settings
    grid = TuningConfig(lrs=(1e-4, 5e-2), epochs=(1,), budget=0.5)
    tuned = recipe.model_copy(update={"tuning": grid})
    chosen, table = probe_settings(tuned, 8)
    assert (table["k"] == 8).all() and len(table) == 2
    assert chosen.finetune.lr == table["lr"].iloc[0] and chosen.tuning == grid  # the recipe's grid kept as it was
    off = tuned.model_copy(update={"probes": tuned.probes.model_copy(update={"tune": False})})
    assert probe_settings(off, 8) == (off, None)
