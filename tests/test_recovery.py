"""The recovery report (PASER's setting): what pruning cost and what each arm won back, with intervals."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from bidsml.report.recovery import perplexity_differences, recovery_keys, recovery_table


def _items(seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    acc = {"original": 0.8, "base": 0.5, "paser@0.1": 0.65, "random@0.1": 0.6}
    ppl_nll = {"original": 2.0, "base": 3.0, "paser@0.1": 2.5, "random@0.1": 2.6}
    for model in acc:
        for s in [None] if model in ("original", "base") else [0, 1]:
            for bench in ("boolq", "piqa"):
                for i in range(40):
                    rows.append(
                        {
                            "method": model,
                            "seed": s,
                            "benchmark": bench,
                            "id": f"{bench}/{i}",
                            "metric": "accuracy",
                            "score": float(rng.random() < acc[model]),
                            "nll": 1.0,
                            "tokens": 3,
                        }
                    )
            for i in range(12):
                rows.append(
                    {
                        "method": model,
                        "seed": s,
                        "benchmark": "lambada_ppl",
                        "id": f"l/{i}",
                        "metric": "perplexity",
                        "score": float("nan"),
                        "nll": ppl_nll[model] + 0.1 * rng.standard_normal(),
                        "tokens": 20 + 7 * i,
                    }
                )
    return pd.DataFrame(rows)


def test_macro_accuracy_differences_equal_the_direct_means_and_carry_intervals():
    items = _items()
    table = recovery_table(items, ["paser@0.1", "random@0.1"], "random@0.1")
    macro = table[table["summary"] == "macro accuracy"].set_index("model")
    acc = items[items["metric"] == "accuracy"]

    def direct(m):
        return acc[acc["method"] == m].groupby("benchmark")["score"].mean().mean()

    assert macro.loc["base", "minus_original"] == pytest.approx(direct("base") - direct("original"))
    assert macro.loc["paser@0.1", "minus_base"] == pytest.approx(direct("paser@0.1") - direct("base"))
    r = macro.loc["paser@0.1"]
    assert r["lo_random@0.1"] < r["minus_random@0.1"] < r["hi_random@0.1"]
    assert set(table["summary"]) == {"macro accuracy", "boolq", "piqa", "perplexity (lambada_ppl)"}


def test_perplexity_is_the_corpus_statistic_and_its_difference_is_bootstrapped():
    items = _items()
    point, diffs = perplexity_differences(
        items, "lambada_ppl", ["base", "paser@0.1"], [("paser@0.1", "base")], n_boot=500
    )
    g = items[(items["benchmark"] == "lambada_ppl") & (items["method"] == "paser@0.1")]
    assert point["paser@0.1"] == pytest.approx(math.exp((g["nll"] * g["tokens"]).sum() / g["tokens"].sum()))
    est, lo, hi = diffs[("paser@0.1", "base")]
    assert est < 0 and lo < est < hi < 0  # recovery lowers the perplexity, clearly at these sizes


def test_the_json_keys_name_every_arm_and_both_summaries():
    items = _items()
    arms = ["paser@0.1", "random@0.1"]
    keys = recovery_keys(recovery_table(items, arms, "random@0.1"), arms, "paser@0.1", "random@0.1")
    json.dumps(keys)  # serialisable
    assert set(keys) == {"pruned_minus_base", "recovered_minus_pruned", "paser_minus_random"}
    assert set(keys["recovered_minus_pruned"]) == set(arms)
    for k in ("macro_accuracy", "perplexity"):
        d = keys["pruned_minus_base"][k]
        assert d["lo"] <= d["estimate"] <= d["hi"]
    assert (
        keys["pruned_minus_base"]["macro_accuracy"]["estimate"]
        < 0
        < keys["pruned_minus_base"]["perplexity"]["estimate"]
    )
