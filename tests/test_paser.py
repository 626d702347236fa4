"""PASER: pruning (magnitude, Wanda), the degradation score, the selection loop against a transcription of the
published one, and a pruned-model run end to end."""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pytest
import torch

from bidsml.pruning.degradation import position_jsd
from bidsml.model import load_base_model
from bidsml.pruning.prune import decoder_layers, layer_linears, magnitude_prune, sparsity_of, wanda_prune
from bidsml.selectors.paser import (
    ConceptGraph,
    allocate,
    concepts,
    diffusion_embedding,
    row_scores,
    select_in_clusters,
)
from tests.conftest import TINY


def test_magnitude_prunes_the_smallest_weights_of_each_matrix():
    model = load_base_model(TINY)
    before = {n: m.weight.detach().clone() for n, m in layer_linears(decoder_layers(model)[0]).items()}
    magnitude_prune(model, 0.5)
    assert sparsity_of(model) == pytest.approx(0.5, abs=1e-3)
    for name, lin in layer_linears(decoder_layers(model)[0]).items():
        w0, w = before[name], lin.weight.detach()
        assert int((w == 0).sum()) == w.numel() // 2
        kept = w0[w != 0].abs()
        assert kept.min() >= w0[w == 0].abs().max()  # every pruned weight is no larger than every kept one


def test_wanda_prunes_each_row_by_weight_times_input_norm():
    model = load_base_model(TINY)
    torch.manual_seed(0)
    ids = torch.randint(5, 500, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # a padded row: its pad positions are not in the norms
    # layer 0's inputs do not depend on any pruning: measure them on the unpruned model
    lin0 = layer_linears(decoder_layers(model)[0])
    seen = {}
    hooks = [
        m.register_forward_hook(lambda mod, a, o, n=n: seen.__setitem__(n, a[0].detach())) for n, m in lin0.items()
    ]
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    for h in hooks:
        h.remove()
    before = {n: m.weight.detach().clone() for n, m in lin0.items()}
    wanda_prune(model, 0.25, [(ids, mask)])
    for name, lin in lin0.items():
        x = seen[name][mask.bool()]  # real tokens only
        metric = before[name].abs() * x.norm(dim=0)[None, :]
        n = int(lin.in_features * 0.25)
        want = torch.zeros_like(before[name], dtype=torch.bool)
        want.scatter_(1, torch.sort(metric, dim=1, stable=True).indices[:, :n], True)
        assert torch.equal(lin.weight.detach() == 0, want | (before[name] == 0)), name
        assert ((lin.weight == 0).sum(dim=1) >= n).all()
    assert sparsity_of(model) == pytest.approx(0.25, abs=1e-3)


def _wanda_by_full_passes(model, sparsity, batches):
    """Wanda as a reference: each layer's input norms from a full forward pass of the model (the layers below
    already pruned), the pass stopped after that layer; one pass per layer."""
    for layer in decoder_layers(model):
        lin = layer_linears(layer)
        seen = {n: [] for n in lin}
        hooks = [m.register_forward_hook(lambda mod, a, o, n=n: seen[n].append(a[0].detach())) for n, m in lin.items()]
        with torch.no_grad():
            for ids, mask in batches:
                model(input_ids=ids, attention_mask=mask)
        for h in hooks:
            h.remove()
        for name, m in lin.items():
            x = torch.cat([s[mask.bool()] for s, (_, mask) in zip(seen[name], batches)]).double()
            norm = torch.sqrt((x**2).sum(0) / len(x)).to(m.weight.dtype)
            metric = m.weight.data.abs().float() * norm.float()[None, :]
            n = int(m.in_features * sparsity)
            idx = torch.sort(metric, dim=1, stable=True).indices[:, :n]
            m.weight.data.scatter_(1, idx, 0.0)


def test_wanda_carried_layer_by_layer_equals_full_passes_per_layer():
    torch.manual_seed(0)
    batches = []
    for _ in range(2):
        ids = torch.randint(5, 500, (3, 16))
        mask = torch.ones_like(ids)
        mask[2, 10:] = 0
        batches.append((ids, mask))
    a, b = load_base_model(TINY), load_base_model(TINY)
    wanda_prune(a, 0.5, batches)
    _wanda_by_full_passes(b, 0.5, batches)
    for (na, wa), (nb, wb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(wa == 0, wb == 0), na  # the same mask, every layer


def test_jsd_equals_the_published_formula_and_is_zero_for_the_same_model():
    torch.manual_seed(1)
    a, b = torch.randn(3, 7, 50), torch.randn(3, 7, 50)
    p, q = torch.softmax(a, -1), torch.softmax(b, -1)
    m = 0.5 * (p + q)
    ref = 0.5 * ((p * torch.log(p / m)).sum(-1) + (q * torch.log(q / m)).sum(-1))
    torch.testing.assert_close(position_jsd(a, b), ref, atol=1e-5, rtol=1e-5)
    assert position_jsd(a, a).abs().max() < 1e-6 and position_jsd(a, b).max() <= math.log(2) + 1e-6


# ---- the selection loop, against a transcription of the published one -------------------------------------------


def published_loop(clusters, cds, k, ies, row_concepts):
    """The reference's allocate_budget + select_samples, in plain Python (networkx graph, floor budgets)."""
    total = sum(cds.values())
    budgets = {c: int(k * (v / total)) for c, v in cds.items()}
    ccg, out = nx.Graph(), []
    for c, budget in budgets.items():
        members = sorted([i for i in range(len(clusters)) if clusters[i] == c], key=lambda i: ies[i], reverse=True)
        n = 0
        for i in members:
            if n >= budget:
                break
            cs = row_concepts[i]
            if all(
                not (a in ccg.nodes and b in ccg.nodes and not ccg.has_edge(a, b)) for a in cs for b in cs if a != b
            ):
                out.append(i)
                n += 1
                for a in cs:
                    for b in cs:
                        if a != b:
                            ccg.add_edge(a, b)
    return out


def test_the_selection_loop_equals_the_published_one_when_its_budgets_sum_to_k():
    rng = np.random.default_rng(0)
    n = 60
    clusters = np.repeat(np.arange(3), 20)
    cds = {0: 0.2, 1: 0.5, 2: 0.3}  # K = 20: floors 4 + 10 + 6 = 20 exactly
    ies = rng.random(n)
    vocab = [f"c{j}" for j in range(12)]
    row_concepts = [frozenset(rng.choice(vocab, size=rng.integers(0, 4), replace=False)) for _ in range(n)]
    ours = select_in_clusters(clusters, allocate(20, cds), ies, row_concepts)
    assert ours == published_loop(clusters, cds, 20, ies, row_concepts)
    assert allocate(20, cds) == {0: 4, 1: 10, 2: 6}


def test_budgets_sum_to_k_where_the_published_floors_fall_short_and_the_shortfall_is_filled():
    cds = {0: 1.0, 1: 1.0, 2: 1.0}
    assert sum(int(10 * v / 3) for v in cds.values()) == 9  # the published allocation: one row short
    assert allocate(10, cds) == {0: 4, 1: 3, 2: 3}  # the remainder to the largest fraction, lower cluster first
    # every row conflicts with row 0's concepts after it is kept: the loop keeps 1, the fill takes the best others
    clusters = np.zeros(5, dtype=int)
    cs = [frozenset({"a", "b"}), frozenset({"a", "c"}), frozenset({"b", "c"}), frozenset({"a", "b", "c"}), frozenset()]
    g = ConceptGraph()
    g.add(cs[0])
    assert g.consistent(frozenset({"a", "b", "x"}))  # a and b were seen together; x is new
    g.add(frozenset({"c", "d"}))
    assert not g.consistent(frozenset({"a", "c"}))  # both known, never seen together
    rows = select_in_clusters(clusters, {0: 4}, np.array([0.9, 0.8, 0.7, 0.6, 0.5]), cs)
    assert len(rows) == 4 and rows[0] == 0 and len(set(rows)) == 4


def test_row_scores_divide_degradation_by_the_log_of_the_squared_cost():
    s = row_scores(np.array([2.0]), np.array([10]), np.array([90]))
    assert s[0] == pytest.approx(2.0 / math.log(100**2))


def test_the_diffusion_embedding_holds_eigenvectors_of_the_random_walk_laplacian():
    E = np.random.default_rng(2).normal(size=(40, 5))
    V = diffusion_embedding(E, 4)
    from sklearn.metrics import pairwise_distances

    d = pairwise_distances(E)
    A = np.exp(-(d**2) / (2 * np.median(d) ** 2))
    L = np.eye(40) - A / A.sum(1, keepdims=True)
    lam = np.sort(np.linalg.eigvals(L).real)[:4]
    for j in range(4):
        v = V[:, j]
        assert np.allclose(L @ v, (v @ L @ v) / (v @ v) * v, atol=1e-8)  # an eigenvector
    assert np.allclose(sorted((V[:, j] @ L @ V[:, j]) / (V[:, j] @ V[:, j]) for j in range(4)), lam, atol=1e-8)


def test_concepts_are_rake_keyphrases_offline():
    got = concepts("Write a Python function that sorts a list of integers. Return the sorted list.")
    assert {"write", "python function", "sorts", "integers", "return", "sorted list"} <= got
    assert not any(w in got for w in ("a", "the", "that", "of"))


def test_a_recipe_naming_paser_without_a_prune_section_fails_before_any_step():
    from bidsml.config import parse_recipe
    from bidsml.errors import RecipeError

    raw = {
        "name": "t",
        "model": {"tiny": True},
        "data": {"pool": [{"source": "sciq", "n": 4}], "targets": [{"task": "mmlu"}]},
        "selection": {"methods": ["paser"]},
    }
    with pytest.raises(RecipeError, match="method 'paser' selects recovery data for a pruned model: add a `prune`"):
        parse_recipe(raw)
    assert parse_recipe({**raw, "prune": {"method": "magnitude", "sparsity": 0.3}}).prune.sparsity == 0.3


@pytest.mark.e2e
def test_a_pruned_model_run_builds_prune_degradation_and_a_paser_selection(tmp_path, prefect_harness):
    """tiny.yaml with `prune` (Wanda, 50%) and paser: the later steps run on the pruned model folder, the
    degradation step scores every pool row, paser selects K rows, and `bidsflow select --method paser` agrees."""
    import json
    from pathlib import Path

    import pandas as pd
    from typer.testing import CliRunner

    from bidsml.config import load_recipe
    from flows.cli import app
    from flows.pipeline import pipeline
    from storage.runs import list_runs

    recipe = load_recipe(Path(__file__).parents[1] / "recipes" / "tiny.yaml").with_overrides(
        {
            "run_root": str(tmp_path / "runs"),
            "prune": {"method": "wanda", "sparsity": 0.5, "calibration_rows": 8},
            "selection.methods": ["random", "paser"],
            "selection.budgets": [6],
        }
    )
    pipeline(recipe)
    (run,) = list_runs(Path(recipe.run_root))
    refs = run["refs"]
    prune = refs["prune"]["main"]
    assert prune["meta"]["sparsity_reached"] == pytest.approx(0.5, abs=0.01)
    assert prune["meta"]["held_out_nll_pruned"] != prune["meta"]["held_out_nll_original"]
    assert run["recipe"]["model"]["path"].startswith(prune["uri"])  # the run trained the pruned model
    deg = pd.read_parquet(Path(refs["degradation"]["main"]["uri"]) / "degradation.parquet")
    assert len(deg) == refs["data"]["main"]["meta"]["pool_out"] and (deg["jsd_sum"] > 0).all()
    assert (deg["jsd_mean"] <= math.log(2)).all() and (deg["n_tokens"] > 0).all()
    # the degradation reads the pool: another validation draw (an experiment's next seed) keeps its identity
    from flows.runner import run_step
    from storage.refs import load_ref
    from tasks.registry import STEPS, plan

    data, pruned = (load_ref(Path(refs[k]["main"]["uri"])) for k in ("data", "prune"))
    other = run_step(STEPS["data"], recipe.with_overrides({"data.val_seed": 7}), {})
    assert other.digest != data.digest
    same = [plan(STEPS["degradation"], recipe, {"data": d, "prune": pruned}).identity for d in (data, other)]
    assert same[0] == same[1]
    sel = refs["selection"]["paser@6"]
    assert sel["meta"]["k"] == 6
    # the unpruned model is evaluated beside the pruned base
    assert {"base", "original", "paser@6", "random@6"} <= set(refs["evaluation"])
    assert refs["evaluation"]["original"]["digest"] != refs["evaluation"]["base"]["digest"]
    # the run report says what pruning cost and what each arm won back, from recovery.csv beside it
    report = Path(run["report"])
    assert "## What pruning cost and what recovery won back" in report.read_text()
    rec = pd.read_csv(report.parent / "recovery.csv")
    macro = rec[rec["summary"] == "macro accuracy"].set_index("model")
    assert set(macro.index) == {"original", "base", "paser@6", "random@6"}
    assert (report.parent / "recovery.png").stat().st_size > 0
    # the same selection from the CLI, on the run's cached artifacts
    out = tmp_path / "sel.json"
    res = CliRunner().invoke(
        app,
        [
            "select",
            "--run",
            "latest",
            "--run-root",
            recipe.run_root,
            "--method",
            "paser",
            "--budget",
            "6",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    table = pd.read_parquet(Path(sel["uri"]) / "selection.parquet")
    assert json.loads(out.read_text())["selected"] == table["train_idx"].tolist()
