"""End to end: the pipeline flow on the tiny model, caching and step reruns, the CLI."""

import datetime as dt
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from bidsml.config import load_recipe
from flows.pipeline import branch_steps, per_run_steps
from tests.conftest import run_names, task_run_states, unreadable

pytestmark = pytest.mark.e2e  # slow end-to-end: skip with -m "not e2e"

RECIPE = Path(__file__).parents[1] / "recipes" / "tiny.yaml"


def _now():
    return dt.datetime.now(dt.timezone.utc)


@pytest.fixture(scope="module")
def recipe(tmp_path_factory, prefect_harness):
    root = tmp_path_factory.mktemp("run")
    return load_recipe(RECIPE).with_overrides({"run_root": str(root)})


@pytest.fixture(scope="module")
def first_run(recipe):
    from flows.pipeline import pipeline

    since = _now()
    out = pipeline(recipe)
    first_run_names.extend(run_names(since))
    return out, task_run_states(since)


first_run_names: list[list[str]] = []


def test_every_flow_and_task_run_of_the_pipeline_has_a_readable_name(first_run):
    flows, tasks = first_run_names
    assert {"pipeline tiny", "data", "features", "evaluation base", "selection bids@8", "finetune bids@8"} <= set(flows)
    assert {"selection bids@8", "evaluation base", "branch bids@8"} <= set(tasks), tasks
    assert not unreadable(flows) and not unreadable(tasks), (unreadable(flows), unreadable(tasks))


def test_pipeline_produces_subsets_evaluation_and_report(first_run, recipe):
    out, states = first_run
    assert all(s == ["Completed"] * len(s) for s in states.values()), states
    ran = {s.name for s in per_run_steps(recipe) + branch_steps()}
    assert set(states) == ran and "representations" in ran  # every step ran, rds's representations included
    assert len(states["evaluation"]) == 4  # base + one per selection
    for name, path in out["subsets"].items():
        lines = Path(path).read_text().splitlines()
        assert len(lines) == 8, name
        assert {"id", "source", "messages"} <= set(json.loads(lines[0]))
    ev = pd.read_csv(out["evaluation"])
    assert set(ev["model"]) == {"base", "random@8", "bids@8", "rds@8"}
    assert {"mmlu", "gsm8k", "humaneval", "bbh", "macro-average", "worst-task", "code"} <= set(ev["name"])
    assert set(ev[ev["level"] == "benchmark"]["metric"]) == {"accuracy", "exact_match", "pass@1"}
    assert ev["nll"].notna().all() and (ev["nll"] > 0).all()
    report = Path(out["report"]).read_text()
    assert "bids@8" in report and (Path(out["outputs"]) / "evaluation.png").stat().st_size > 1000
    assert "Influence per task" in report and (Path(out["outputs"]) / "influence_distributions.png").exists()
    assert "Influence fidelity (projected vs exact)" in report
    # the influence store answers SQL
    from storage.influence_store import open_influence
    from storage.runs import load_run

    rec = load_run(Path(recipe.run_root), "latest")
    con = open_influence(Path(rec["refs"]["influence"]["main"]["uri"]))
    n_train, n_val = con.execute("SELECT count(DISTINCT train_idx), count(DISTINCT val_idx) FROM influence").fetchone()
    con.close()
    assert n_val == 4 and n_train == rec["refs"]["data"]["main"]["meta"]["pool_out"]
    fidelity = pd.read_parquet(Path(rec["refs"]["diagnostics"]["main"]["uri"]) / "fidelity.parquet")
    assert set(fidelity["task"]) == {t.task for t in recipe.data.targets} | {"all"}
    assert fidelity["spearman"].between(-1, 1).all() and (fidelity["n_rows"] == n_train).all()


def test_unchanged_rerun_hits_the_cache_for_every_step(first_run, recipe):
    from flows.pipeline import pipeline

    since = _now()
    out = pipeline(recipe)
    states = task_run_states(since)
    assert states and all(set(s) == {"Cached"} for s in states.values()), states
    assert out["subsets"] == first_run[0]["subsets"]


def test_budget_change_recomputes_only_selection_finetune_evaluation(first_run, recipe):
    from flows.pipeline import pipeline

    since = _now()
    pipeline(recipe.with_overrides({"selection.budgets": [6]}))
    states = task_run_states(since)
    for step in ("data", "warmup", "features", "influence"):
        assert states[step] == ["Cached"], (step, states)
    for step in ("diagnostics", "representations"):
        assert states[step] == ["Cached"], (step, states)
    assert states["selection"] == ["Completed"] * 3
    assert states["finetune"] == ["Completed"] * 3
    assert states["evaluation"] == ["Cached"] + ["Completed"] * 3  # base model eval is reused


def test_projection_change_recomputes_from_features_on(first_run, recipe):
    from flows.pipeline import pipeline

    since = _now()
    pipeline(recipe.with_overrides({"features.proj_dim": 32}))
    states = task_run_states(since)
    for step in ("data", "warmup", "representations"):
        assert states[step] == ["Cached"], (step, states)
    for step in ("features", "influence", "diagnostics"):
        assert states[step] == ["Completed"], (step, states)
    assert states["selection"] == ["Completed"] * 3
    assert states["evaluation"][0] == "Cached"
    # random and rds ignore the features: their recomputed selections have the same rows
    from storage.runs import load_run

    new = load_run(Path(recipe.run_root), "latest")["refs"]["selection"]
    old = load_run(Path(recipe.run_root), first_run[0]["run_id"])["refs"]["selection"]
    subsets = {k: [Path(r["uri"], "subset.jsonl").read_text() for r in (old[k], new[k])] for k in old}
    assert subsets["random@8"][0] == subsets["random@8"][1] and subsets["rds@8"][0] == subsets["rds@8"][1]
    # a fine-tune depends on its subset's content: same rows, cached fine-tune (and its evaluation)
    expected = ["Cached" if a == b else "Completed" for a, b in subsets.values()]
    assert sorted(states["finetune"]) == sorted(expected), (states["finetune"], expected)
    assert states["finetune"].count("Cached") >= 2


def test_deleted_artifact_is_rebuilt_and_downstream_stays_cached(first_run, recipe):
    from flows.pipeline import pipeline
    from storage.runs import load_run

    rec = load_run(Path(recipe.run_root), first_run[0]["run_id"])
    shutil.rmtree(rec["refs"]["selection"]["bids@8"]["uri"])
    since = _now()
    pipeline(recipe)
    states = task_run_states(since)
    assert states["selection"] == ["Cached", "Completed", "Cached"]  # only bids rebuilt
    assert set(states["finetune"]) == {"Cached"}  # deterministic rebuild: same digest


def test_cli_step_select_and_runs(first_run, recipe, tmp_path):
    from flows.cli import app

    rfile = tmp_path / "r.yaml"
    import yaml

    rfile.write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    runner = CliRunner()
    res = runner.invoke(app, ["step", "selection", "--recipe", str(rfile), "-p", "method=less", "-p", "budget=5"])
    assert res.exit_code == 0, res.output
    assert '"method": "less"' in res.output and '"k": 5' in res.output
    res = runner.invoke(app, ["runs", "--run-root", recipe.run_root])
    assert res.exit_code == 0 and first_run[0]["run_id"][:8] in res.output
    sel = load_selection_digest(recipe, first_run[0]["run_id"])
    res = runner.invoke(app, ["lineage", sel, "--run-root", recipe.run_root])
    assert res.exit_code == 0
    for kind in ("selection", "influence", "features", "warmup", "data"):
        assert kind in res.output, res.output
    # a whole run, as mermaid: every selection, fine-tune and evaluation with its inputs
    res = runner.invoke(app, ["lineage", first_run[0]["run_id"][:8], "--run-root", recipe.run_root, "--mermaid"])
    assert res.exit_code == 0 and res.output.startswith("flowchart LR"), res.output
    for label in ("selection bids@8", "finetune rds@8", "evaluation base", "features", "-->"):
        assert label in res.output, res.output
    assert Path(first_run[0]["lineage"]).read_text().startswith("flowchart LR")
    res = runner.invoke(app, ["lineage", "nope-nothing", "--run-root", recipe.run_root])
    assert res.exit_code == 2 and "no artifact or run 'nope-nothing'" in res.output


def test_cli_query_views_and_select_on_run(first_run, recipe, tmp_path):
    from flows.cli import app

    runner = CliRunner()
    res = runner.invoke(
        app, ["query", "SELECT task, n_val FROM task_stats", "--run", "latest", "--run-root", recipe.run_root]
    )
    assert res.exit_code == 0 and "mmlu" in res.output and "gsm8k" in res.output, res.output
    old = runner.invoke(app, ["query", "latest", "SELECT task, n_val FROM task_stats", "--run-root", recipe.run_root])
    assert old.exit_code == 0 and "--run latest" in old.output and "mmlu" in old.output  # the earlier form, noted
    res = runner.invoke(
        app,
        [
            "query",
            "SELECT method, sum(n) AS n FROM selection_composition GROUP BY ALL",
            "--run-root",
            recipe.run_root,
        ],
    )
    assert res.exit_code == 0 and "bids" in res.output and "rds" in res.output, res.output
    res = runner.invoke(app, ["query", "SELECT * FROM nope", "--run-root", recipe.run_root])
    assert res.exit_code == 2 and "nope" in res.output
    assert "tables and views of this run:" in res.output and "task_stats" in res.output and "selections" in res.output
    listed = " ".join(res.output.split("tables and views of this run:")[1].split()).split(", ")
    assert len(listed) == len(set(listed)), listed  # each name once
    out = tmp_path / "sel.json"
    res = runner.invoke(
        app,
        [
            "select",
            "--run",
            "latest",
            "--run-root",
            recipe.run_root,
            "--method",
            "bids",
            "--budget",
            "8",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    sel = json.loads(out.read_text())
    rec_sel = pd.read_parquet(Path(first_run[0]["subsets"]["bids@8"]).with_name("selection.parquet"))
    assert sel["selected"] == rec_sel["train_idx"].tolist()  # same as the pipeline's bids selection


def load_selection_digest(recipe, run_id):
    from storage.runs import load_run

    return load_run(Path(recipe.run_root), run_id)["refs"]["selection"]["bids@8"]["digest"][:16]


def test_cli_reports_bad_recipe_and_bad_data(tmp_path, prefect_harness):
    from flows.cli import app

    runner = CliRunner()
    bad = tmp_path / "bad.yaml"
    bad.write_text(RECIPE.read_text().replace("lora: {r: 4", "lora: {rank: 4"))
    res = runner.invoke(app, ["run", "--recipe", str(bad)])
    assert res.exit_code == 2 and "lora.rank" in res.output
    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"id": "a", "source": "s", "messages": [{"role": "user", "content": "q"}]}\n')
    r = load_recipe(RECIPE).model_dump(mode="json")
    r["run_root"] = str(tmp_path / "runs")
    r["data"]["pool"] = [{"source": "jsonl", "path": str(pool)}]
    import yaml

    good_yaml = tmp_path / "user.yaml"
    good_yaml.write_text(yaml.safe_dump(r))
    res = runner.invoke(app, ["run", "--recipe", str(good_yaml)])
    assert res.exit_code == 2
    assert "pool.jsonl:1" in res.output.replace("\n", "") and "assistant" in res.output


def test_validate_trains_the_arms_reports_per_task_and_resumes_from_cache(first_run, recipe):
    """`bidsflow validate`: top/bottom/random/removal probes per target, paired differences, LDS, cached reruns."""
    import numpy as np
    from typer.testing import CliRunner

    from bidsml.validate import seeded_difference
    from flows.cli import app
    from storage.influence_store import load_influence_tables, read_influence_matrix
    from storage.runs import load_run, run_ref

    run_id = first_run[0]["run_id"]
    res = CliRunner().invoke(
        app, ["validate", "--run", run_id[:8], "--k", "4", "--seeds", "2", "--lds", "3", "--run-root", recipe.run_root]
    )
    assert res.exit_code == 0, res.output
    out_dir = Path(recipe.run_root) / recipe.name / "validate"
    result = json.loads((out_dir / "validate.json").read_text())
    assert [r["task"] for r in result["tasks"]] == ["gsm8k", "mmlu"]
    assert result["k"] == 4 and result["removal_base"] == 16 and result["lds_models"] == 3
    assert (out_dir / "validate.png").stat().st_size > 0
    assert "## Does influence work on this run's data?" in Path(first_run[0]["report"]).read_text()
    assert result["min_items"] == 30 and result["probe_settings"] == "the run's"  # tiny.yaml has no tuning grid
    for r in result["tasks"]:
        assert r["n_seeds"] == 2
        # the tiny recipe scores a handful of items per task: no verdict is earned on so few
        assert r["verdict"] == f"too few scored items ({r['n_items']} < 30)"
        assert r["top_minus_random_nll_lo"] <= r["top_minus_random_nll"] <= r["top_minus_random_nll_hi"]
    # the probes: artifacts of the run's root, the top arm trained on the top-4 rows by mmlu's mean influence
    root = Path(recipe.run_root) / "artifacts" / "probe"
    built = [p for p in root.iterdir() if (p / "meta.json").exists()]
    probes = {json.loads((p / "meta.json").read_text())["summary"]["probe"]: p for p in built}
    assert {"top[mmlu]", "top[mmlu]#1", "bottom[gsm8k]#1", "remove-top[mmlu]", "random#0", "random#1", "half#2"} <= set(
        probes
    )
    assert len(probes) == 2 * (2 * 3 + 2) + 3  # per seed: 2 tasks x 3 arms + 2 shared arms; 3 halves
    infl = run_ref(load_run(Path(recipe.run_root), run_id), "influence")
    _, val = load_influence_tables(infl.path)
    mmlu = read_influence_matrix(infl.path)[:, (val["task"] == "mmlu").to_numpy()].mean(1)
    assert json.loads((probes["top[mmlu]"] / "rows.json").read_text()) == sorted(np.argsort(-mmlu, kind="stable")[:4])
    # the reported difference is the paired one of the probes' own item NLLs
    items = {
        name: pd.read_parquet(p / "items.parquet").query("task == 'mmlu'").set_index("id")["nll"]
        for name, p in probes.items()
    }
    ids = items["top[mmlu]"].index
    top = np.stack([items["top[mmlu]"].loc[ids], items["top[mmlu]#1"].loc[ids]])
    random = np.stack([items["random#0"].loc[ids], items["random#1"].loc[ids]])
    want = seeded_difference(top, random)
    got = next(r for r in result["tasks"] if r["task"] == "mmlu")
    assert got["top_minus_random_nll"] == pytest.approx(want[0]) and got["top_minus_random_nll_lo"] == pytest.approx(
        want[1]
    )
    # again: every probe from the cache, the same result
    mtimes = {p: p.stat().st_mtime_ns for p in built}
    res = CliRunner().invoke(
        app, ["validate", "--run", run_id[:8], "--k", "4", "--seeds", "2", "--lds", "3", "--run-root", recipe.run_root]
    )
    assert res.exit_code == 0, res.output
    assert {p: p.stat().st_mtime_ns for p in root.iterdir() if (p / "meta.json").exists()} == mtimes
    again = json.loads((out_dir / "validate.json").read_text())
    assert again["tasks"] == result["tasks"] and again["lds"] == result["lds"]


def test_validate_bad_options_fail_at_once_naming_them(first_run, recipe):
    from typer.testing import CliRunner

    from flows.cli import app

    run_id = first_run[0]["run_id"][:8]
    cases = [
        (["--run", run_id, "--k", "0"], "--k 0: must be within 1.."),
        (["--run", run_id, "--k", "500"], "--k 500"),
        (["--run", "no-such-run"], "no run 'no-such-run'"),
        (["--run", run_id, "--lds", "2"], "--lds 2"),
    ]
    # runs a user can break: a target without scored items, an artifact deleted since
    records = Path(recipe.run_root) / "run-records"
    record = json.loads((records / f"{first_run[0]['run_id']}.json").read_text())
    no_items = json.loads(json.dumps(record))
    no_items["run_id"], no_items["finished_at"] = "zz-no-items", "0000"  # never "latest"
    no_items["recipe"]["evaluation"]["benchmarks"] = {"mmlu": 3}
    (records / "zz-no-items.json").write_text(json.dumps(no_items))
    gone = json.loads(json.dumps(record))
    gone["run_id"], gone["finished_at"] = "zz-gone", "0000"
    gone["refs"]["influence"]["main"]["uri"] += "-deleted"
    (records / "zz-gone.json").write_text(json.dumps(gone))
    cases += [
        (["--run", "zz-no-items"], "targets ['gsm8k'] have no scored items; add them to evaluation.benchmarks"),
        (["--run", "zz-gone"], "its influence artifact is missing or changed"),
    ]
    try:
        for args, message in cases:
            res = CliRunner().invoke(app, ["validate", *args, "--run-root", recipe.run_root])
            assert res.exit_code == 2 and message in " ".join(res.output.split()), (args, res.output)
    finally:
        for name in ("zz-no-items", "zz-gone"):
            (records / f"{name}.json").unlink()


def test_cli_select_mig_kmq_and_random_balanced_on_a_run(first_run, recipe, tmp_path):
    """The seed literature's selectors on a finished run: representations, quality proxy and sources from its
    artifacts; seeded; kmq-iterative (it fine-tunes) is pointed to the pipeline."""
    from flows.cli import app
    from storage.influence_store import load_influence_tables
    from storage.runs import load_run, run_ref

    runner = CliRunner()
    train, _ = load_influence_tables(run_ref(load_run(Path(recipe.run_root), "latest"), "influence").path)
    sources = train["source"].to_numpy()
    assert train["planted_for"].isna().all()  # the store's train_examples know planted rows (none here)
    for method in ("mig", "kmq", "random-balanced"):
        outs = []
        for i in range(2):
            out = tmp_path / f"{method}{i}.json"
            args = ["select", "--run", "latest", "--run-root", recipe.run_root, "--method", method, "--budget", "8"]
            res = runner.invoke(app, [*args, "--out", str(out)])
            assert res.exit_code == 0, res.output
            outs.append(json.loads(out.read_text()))
        sel = outs[0]["selected"]
        assert outs[1]["selected"] == sel and len(set(sel)) == 8 and outs[0]["n"] == len(train)
        if method == "random-balanced":  # two sources: 4 rows each
            assert sorted(pd.Series(sources[sel]).value_counts().tolist()) == [4, 4]
    res = runner.invoke(
        app,
        ["select", "--run", "latest", "--run-root", recipe.run_root, "--method", "kmq-iterative", "--budget", "8"]
        + ["--out", str(tmp_path / "it.json")],
    )
    assert res.exit_code == 2 and "fine-tunes between rounds" in res.output


def test_kmq_iterative_builds_a_selection_and_a_fine_tune_per_round_with_lineage(first_run, recipe):
    from flows.pipeline import reselect
    from storage.lineage import upstream
    from storage.runs import load_run
    from storage.selections import load_selection_table

    two = recipe.with_overrides({"selection.options": {"kmq-iterative": {"rounds": 2}}})
    since = _now()
    out = reselect(two, method="kmq-iterative", budget=8)
    flows, _ = run_names(since)
    rounds = [f"selection kmq-iterative@8 · round {r} of 2" for r in (0, 1)] + [
        "finetune kmq-iterative@8 · round 0 of 2",
        "finetune kmq-iterative@8 · round 1 of 2",
    ]
    assert set(rounds) <= set(flows), flows  # the UI tells the rounds apart
    rec = load_run(Path(recipe.run_root), out["run_id"])
    final = rec["refs"]["selection"]["kmq-iterative@8"]
    assert final["meta"]["round"] == 1 and final["meta"]["k"] == 8
    up = upstream(Path(recipe.run_root), final["identity"])
    kinds = [r["kind"] for r in up]
    assert kinds.count("selection") == 2 and "finetune" in kinds  # round 0's selection and its fine-tune
    first = next(r for r in up[1:] if r["kind"] == "selection")
    from storage.refs import ArtifactRef

    r0 = load_selection_table(ArtifactRef(kind="selection", identity=first["identity"], uri=first["uri"], digest=""))
    r1 = load_selection_table(ArtifactRef.model_validate(final))
    assert len(r0) == 4 and r1["train_idx"].tolist()[:4] == r0["train_idx"].tolist()  # rounds add to the rows so far
    ft = rec["refs"]["finetune"]["kmq-iterative@8"]
    assert ft["meta"]["n_train"] == 8


def test_the_lm_eval_backend_rescored_only_the_evaluations_and_the_report_names_it(first_run, recipe):
    """Switching evaluation.backend recomputes the evaluations alone; the report says who scored what (last in this
    module: it becomes the run root's latest run)."""
    from flows.pipeline import pipeline

    since = _now()
    lm = recipe.with_overrides(
        {
            "selection.methods": ["random"],
            "evaluation.backend": "lm-eval",
            "evaluation.formulation": {"arc_challenge": "rc0"},
        }
    )
    out = pipeline(lm)
    states = task_run_states(since)
    for step in ("data", "warmup", "features", "influence", "selection", "finetune"):
        assert set(states[step]) == {"Cached"}, (step, states)
    assert states["evaluation"] == ["Completed"] * 2  # the base model and random@8, rescored
    ev = pd.read_csv(out["evaluation"])
    bench = ev[ev["level"] == "benchmark"].set_index("name")["metric"].to_dict()
    assert bench["arc_challenge"] == "acc_norm" and bench["mmlu"] == "acc" and bench["humaneval"] == "pass@1"
    assert bench["gsm8k"] == "exact_match (strict-match)" and bench["bbh"] == "exact_match"
    report = Path(out["report"]).read_text()
    assert "Scored with lm-evaluation-harness 0.4" in report and "- humaneval: builtin: runs model-written code" in report
    table = pd.read_csv(Path(out["outputs"]) / "lm_eval.csv")
    assert {"base", "random@8"} <= set(table.columns) and "arc_challenge" in set(table["task"])
    # the artifact: rows of both harnesses, lm-eval's aggregates equal to its items' mean, lm-eval's version
    from storage.runs import load_run

    uri = Path(load_run(Path(recipe.run_root), "latest")["refs"]["evaluation"]["base"]["uri"])
    items = pd.read_parquet(uri / "items.parquet")
    assert sorted(items["harness"].unique()) == ["builtin", "lm-eval"]
    assert set(items.loc[items["harness"] == "builtin", "benchmark"]) == {"humaneval", "mbpp"}
    summary = json.loads((uri / "results.json").read_text())
    assert summary["backend"] == "lm-eval" and summary["lm_eval"]["version"].startswith("0.4")
    arc = summary["lm_eval"]["results"]["arc_challenge"]["acc_norm,none"]
    assert arc == pytest.approx(items.loc[items["benchmark"] == "arc_challenge", "score"].mean())
    # the backend is part of the evaluation's identity
    from storage.refs import load_ref
    from tasks.registry import STEPS, plan

    data = {"data": load_ref(Path(load_run(Path(recipe.run_root), "latest")["refs"]["data"]["main"]["uri"]))}
    assert plan(STEPS["evaluation"], lm, data).identity != plan(STEPS["evaluation"], recipe, data).identity
