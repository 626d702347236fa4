"""Paired-bootstrap comparison of methods over seeds and items."""

import numpy as np
import pandas as pd
import pytest

from bidsml.report.experiment import MACRO, WORST, compare_methods, verdict


def _rows(effects: dict[str, float], n_items=60, seeds=(0, 1, 2), noise=0.0, rng_seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(rng_seed)
    difficulty = {b: rng.normal(0, 1, n_items) for b in ("arc", "mmlu")}
    rows = []
    for m, eff in effects.items():
        for s in seeds if m != "base" else [None]:
            for b, d in difficulty.items():
                nll = 2 + d + eff + (b == "arc") * 0.5 + noise * rng.normal(0, 1, n_items)
                for i in range(n_items):
                    rows.append(
                        {
                            "method": m,
                            "seed": s,
                            "benchmark": b,
                            "id": f"{b}/{i}",
                            "nll": nll[i],
                            "score": float(nll[i] < 2),
                        }
                    )
    return pd.DataFrame(rows)


def test_a_constant_shift_is_found_exactly_with_a_zero_width_interval():
    rows = _rows({"base": 0.3, "random": 0.0, "bids": -0.1})
    t = compare_methods(rows, ["base", "random", "bids"], ["random"], metrics=("nll",))
    r = t[(t["benchmark"] == "mmlu") & (t["method"] == "bids")].iloc[0]
    assert r["diff_vs_random"] == pytest.approx(-0.1)
    assert r["lo_vs_random"] == pytest.approx(-0.1) and r["hi_vs_random"] == pytest.approx(-0.1)
    assert verdict(r, "random", higher_is_better=False) == "better"
    macro = t[(t["benchmark"] == MACRO) & (t["method"] == "base")].iloc[0]
    assert macro["diff_vs_random"] == pytest.approx(0.3)
    # the worst task by NLL is the highest: arc (+0.5)
    worst = t[(t["benchmark"] == WORST) & (t["method"] == "random")].iloc[0]
    arc = t[(t["benchmark"] == "arc") & (t["method"] == "random")].iloc[0]
    assert worst["mean"] == pytest.approx(arc["mean"]) and worst["n_seeds"] == 3
    assert np.isnan(t[(t["method"] == "random") & (t["benchmark"] == "mmlu")]["diff_vs_random"].iloc[0])


def test_pure_noise_gives_an_interval_around_zero_and_pairing_narrows_it():
    rows = _rows({"random": 0.0, "less": 0.0}, noise=0.3, rng_seed=1)
    t = compare_methods(rows, ["random", "less"], ["random"], metrics=("nll",))
    r = t[(t["benchmark"] == MACRO) & (t["method"] == "less")].iloc[0]
    assert r["lo_vs_random"] < 0 < r["hi_vs_random"]
    assert verdict(r, "random", higher_is_better=False) == "no difference"
    # item difficulty (sd 1) is shared by both methods: the paired interval is far narrower than it
    assert r["hi_vs_random"] - r["lo_vs_random"] < 0.3


@pytest.mark.e2e
def test_a_recipe_with_seeds_runs_each_seed_and_compares_methods(tmp_path, prefect_harness):
    """Seeds share the pool sources and the scored items; each is a whole independent pipeline (warmup, projection
    seed, validation draw, selection, fine-tuning follow the seed); with `shared_influence` only random selection and
    fine-tuning do."""
    import json
    from pathlib import Path

    from bidsml.config import load_recipe
    from flows.pipeline import pipeline
    from storage.runs import list_runs

    recipe = load_recipe(Path(__file__).parents[1] / "recipes" / "tiny.yaml").with_overrides(
        {
            "run_root": str(tmp_path / "runs"),
            "seeds": [0, 1],
            "lora.layers": [1],  # the fine-tunes share layer 0 with the base model: its states are scored once
            "selection.methods": ["random", "bids", "rds-plus"],
            "evaluation.generate": {"gsm8k": 0, "humaneval": 0, "mbpp": 0, "bbh": 1},
        }
    )
    out = pipeline(recipe)
    table = pd.read_csv(out["table"])
    assert set(table["method"]) == {"base", "random@8", "bids@8", "rds-plus@8"}
    assert {MACRO, WORST, "mmlu", "bbh"} <= set(table["benchmark"]) and set(table["metric"]) == {"score", "nll", "bpb"}
    assert (table["n_seeds"] == 2).all()
    nll = table[(table["metric"] == "nll") & (table["method"] == "bids@8")]
    assert (nll["lo_vs_random@8"] <= nll["diff_vs_random@8"]).all() and (
        nll["diff_vs_random@8"] <= nll["hi_vs_random@8"]
    ).all()
    # undecoded generation items have no standard metric, only their gold NLL
    score = table[(table["metric"] == "score") & (table["benchmark"] == "gsm8k")]
    assert score.empty
    report = Path(out["report"]).read_text()
    assert "Headline: macro-average and worst task" in report and Path(out["plot"]).stat().st_size > 10_000
    records = sorted((Path(recipe.run_root) / "run-records").glob("*.json"))
    refs = [json.loads(p.read_text())["refs"] for p in records]
    assert len(refs) == 2
    # each seed its own validation draw (so its own data artifact) and projection seed; one set of scored items
    assert refs[0]["data"]["main"]["digest"] != refs[1]["data"]["main"]["digest"]
    from storage.datasets import load_split
    from storage.evaluations import load_evaluation_items
    from storage.refs import ArtifactRef

    val = [{e.id for e in load_split(ArtifactRef.model_validate(r["data"]["main"]), "val")} for r in refs]
    assert val[0] != val[1]
    base = [load_evaluation_items(ArtifactRef.model_validate(r["evaluation"]["base"])) for r in refs]
    assert base[0]["id"].tolist() == base[1]["id"].tolist() and base[0]["nll"].tolist() == base[1]["nll"].tolist()
    # what does not depend on the validation draw is computed once for every seed: the base model's scores (one
    # artifact: its identity reads the pool file's content, not the data artifact) and the pool's representations
    assert refs[0]["evaluation"]["base"]["identity"] == refs[1]["evaluation"]["base"]["identity"]
    assert refs[0]["representations"]["main"]["identity"] != refs[1]["representations"]["main"]["identity"]
    assert len(list((Path(recipe.run_root) / "cache" / "representations").glob("*.npz"))) == 3  # pool + 2 val draws
    from storage.representations import load_representations

    reps = [load_representations(ArtifactRef.model_validate(r["representations"]["main"])) for r in refs]
    assert all((reps[0][k] == reps[1][k]).all() for k in reps[0] if k.startswith("train_"))
    assert refs[0]["projection"]["main"]["meta"]["proj_seed"] != refs[1]["projection"]["main"]["meta"]["proj_seed"]
    assert (
        refs[0]["warmup"]["main"]["identity"] != refs[1]["warmup"]["main"]["identity"]
    )  # the warmup order follows the seed
    assert refs[0]["selection"]["random@8"]["digest"] != refs[1]["selection"]["random@8"]["digest"]
    # shared trunk: the first evaluation (the base model's, one for both seeds) recorded layer 0's states once;
    # every fine-tune (3 methods x 2 seeds) reused them
    notes = {e["identity"]: e["meta"]["trunk"] for r in refs for e in r["evaluation"].values()}.values()
    assert sum(n.startswith("recorded") for n in notes) == 1 and sum(n.startswith("reused") for n in notes) == 6
    assert len(list((Path(recipe.run_root) / "trunk").glob("*.safetensors"))) == 1

    # --shared-influence: seed 1 reuses seed 0's warmup / features / influence (from the cache above); the
    # influence selectors pick the same rows in both seeds, random picks and fine-tunes still follow the seed
    shared = pipeline(recipe.with_overrides({"name": recipe.name + "-shared"}), shared_influence=True)
    assert "warmup, features and influence are seed 0's in every seed" in Path(shared["report"]).read_text()
    runs = [r["refs"] for r in list_runs(Path(recipe.run_root))]  # oldest first: seeds 0, 1, then shared 0, 1
    old, new = runs[:2], runs[2:]
    assert len(new) == 2
    for step in ("warmup", "features", "influence"):
        assert new[0][step]["main"]["digest"] == new[1][step]["main"]["digest"] == old[0][step]["main"]["digest"]
    assert new[0]["selection"]["bids@8"]["digest"] == new[1]["selection"]["bids@8"]["digest"]
    assert new[0]["selection"]["random@8"]["digest"] != new[1]["selection"]["random@8"]["digest"]
    assert new[0]["finetune"]["bids@8"]["digest"] != new[1]["finetune"]["bids@8"]["digest"]
