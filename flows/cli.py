"""`bidsflow`: run the pipeline, one step, or inspect runs and lineage."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

# The temporary Prefect server `bidsflow run` starts when no PREFECT_API_URL is set: Prefect's default start
# timeout (20 s) fails on a loaded 2-core machine; set before Prefect reads its settings.
EPHEMERAL_TIMEOUT_S = "180"
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", EPHEMERAL_TIMEOUT_S)

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from flows.terminal import live_display  # noqa: E402

app = typer.Typer(help="BIDS data selection as cached Prefect flows.", no_args_is_help=True)
# soft_wrap: a message is one line however long its paths are (a log or a test reads it whole); tables still fit the width
console = Console(soft_wrap=True)


_DEBUG = {"on": False}


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error.")) -> None:
    """BIDS data selection as cached Prefect flows."""
    from flows.processes import graceful_sigterm, watch_stop_signals

    _DEBUG["on"] = debug
    graceful_sigterm()  # SIGTERM unwinds like Ctrl-C: clusters, temporary servers and runners are stopped
    watch_stop_signals()  # ... and steps running in worker threads stop at their next progress point


def _recipe(path: Path, overrides: list[str]):
    from bidsml.config import load_recipe

    recipe = load_recipe(path)
    if overrides:
        parsed = {}
        for o in overrides:
            if "=" not in o:
                raise typer.BadParameter(f"--set {o!r}: expected KEY=VALUE (e.g. selection.budgets=[20])")
            k, v = o.split("=", 1)
            import yaml

            parsed[k] = yaml.safe_load(v)
        recipe = recipe.with_overrides(parsed)
    return recipe


def _fail(err: Exception) -> None:
    if _DEBUG["on"]:
        raise err
    console.print(f"[red]error:[/red] {err}")
    raise typer.Exit(2)


def _preflight(rec) -> None:
    """Checks what can fail before the first step (`lora.layers`, the Dask scheduler of `execution.address`)."""
    from bidsml.errors import BidsError
    from flows.preflight import preflight

    try:
        preflight(rec)
    except BidsError as err:
        _fail(err)


@app.command()
def run(
    recipe: Path = typer.Option(..., "--recipe", "-r", help="Recipe YAML file."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe value: KEY=VALUE (dotted key, YAML value)."),
    refresh: list[str] = typer.Option([], "--refresh", help="Recompute this step even if cached (repeatable)."),
    shared_influence: bool = typer.Option(
        False,
        "--shared-influence",
        help="A recipe with seeds: one warmup / features / influence (the first seed's); seeds vary random "
        "selection and fine-tuning only. A quick mode: the report says so, and it is never evidence.",
    ),
):
    """Run the whole pipeline (every step cached)."""
    from bidsml.errors import BidsError

    try:
        rec = _recipe(recipe, set_)
    except BidsError as err:
        _fail(err)
    _preflight(rec)
    from flows.pipeline import pipeline

    t = time.time()
    try:
        with live_display():  # in a terminal: one live display of every bar, the log lines above it
            out = pipeline(rec, refresh=refresh or None, shared_influence=shared_influence)
    except BidsError as err:
        _fail(err)
    except RuntimeError as err:
        if "ephemeral Prefect API server" not in str(err):
            raise
        _fail(
            RuntimeError(
                f"the temporary Prefect server did not start within "
                f"{os.environ['PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS']} s (a busy machine?). Start one "
                "server for all runs with `bidsflow ui` and `export PREFECT_API_URL=http://127.0.0.1:4200/api`, "
                "or raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS."
            )
        )
    if "seeds" in out:  # a repeated experiment: its comparison, then each seed's report
        console.print(f"[green]done[/green] in {time.time() - t:.1f}s  experiment over seeds {', '.join(out['seeds'])}")
        console.print(f"report:      {out['report']}")
        console.print(f"table:       {out['table']}")
        console.print(f"plot:        {out['plot']}")
        for seed, path in out["seeds"].items():
            console.print(f"seed {seed}:      {path}")
        return
    console.print(f"[green]done[/green] in {time.time() - t:.1f}s  run {out['run_id']}")
    console.print(f"report:      {out['report']}")
    console.print(f"evaluation:  {out['evaluation']}")
    for name, path in out["subsets"].items():
        console.print(f"subset {name}: {path}")


@app.command()
def step(
    name: str = typer.Argument(..., help="A step (see `bidsflow steps`): data, warmup, features, ..., evaluation."),
    recipe: Path = typer.Option(..., "--recipe", "-r", help="Recipe YAML file (the run root and settings)."),
    from_run: str = typer.Option("latest", "--from-run", help="Run record whose artifacts feed this step."),
    param: list[str] = typer.Option(
        [], "--param", "-p", help="A step parameter: KEY=VALUE (selection: method, budget)."
    ),
    label: str | None = typer.Option(
        None,
        help="Which of the run's artifacts to use: 'method@budget' (finetune: a selection; evaluation: a fine-tune, "
        "else the base model).",
    ),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe value: KEY=VALUE."),
    refresh: bool = typer.Option(False, help="Recompute even if cached."),
):
    """Run one step on its own, from the artifacts of an existing run."""
    from bidsml.errors import BidsError
    from tasks.registry import get_step

    try:
        the_step = get_step(name)
        rec = _recipe(recipe, set_)
        params = _step_params(the_step, param, rec)
    except (BidsError, ValueError) as err:
        _fail(err)
    _preflight(rec)
    from flows.step_flows import STEP_FLOWS

    try:
        with live_display():
            out = STEP_FLOWS[name](rec, params=params, label=label, from_run=from_run, refresh=refresh)
    except BidsError as err:
        _fail(err)
    console.print_json(json.dumps(out.model_dump()))


def _step_params(step, pairs: list[str], recipe) -> dict | None:
    """Returns the step's parameters from KEY=VALUE pairs (selection: defaults to the recipe's first method and
    budget); unknown keys raise naming the step's parameters."""
    import yaml

    if step.params is None:
        if pairs:
            raise ValueError(f"step {step.name!r} takes no parameters (got {', '.join(pairs)})")
        return None
    fields = step.params.model_fields
    out = {}
    if "method" in fields and "budget" in fields:
        out = {"method": recipe.selection.methods[0], "budget": recipe.selection.budgets[0]}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"--param {pair!r}: step {step.name!r} takes {', '.join(f'{k}=...' for k in fields)}")
        out[key] = yaml.safe_load(value)
    return out


@app.command()
def steps():
    """List the steps: what each builds, from which inputs and recipe sections, on which pool."""
    from tasks.registry import STEPS

    table = Table()
    table.add_column("step", no_wrap=True)  # the name a user types: never cut
    for title in ("inputs", "recipe sections", "parameters", "pool", "what it builds"):
        table.add_column(title)
    for s in STEPS.values():
        table.add_row(
            s.name,
            ", ".join(i.key + ("?" if i.optional else "") for i in s.inputs) or "-",
            ", ".join(s.sections) or "-",
            ", ".join(s.params.model_fields) if s.params else "-",
            s.pool,
            s.doc,
        )
    console.print(table)


@app.command()
def ui(
    port: int = typer.Option(4200, help="Port of the Prefect server."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind (keep 127.0.0.1 unless you mean to share it)."),
):
    """Start a Prefect server (UI + API) with analytics off; prints the URL and the PREFECT_API_URL to export.

    SIGTERM or SIGINT (Ctrl-C) stop the server and everything it started; the exit status is the server's.
    """
    import os
    import sys

    from flows.processes import child_server, exit_status, port_in_use

    busy = port_in_use(host, port)
    if busy:
        _fail(RuntimeError(busy))
    env = {
        **os.environ,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_API_HOST": host,
        "PREFECT_SERVER_API_PORT": str(port),
    }
    url = f"http://{host}:{port}"
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)]
    with child_server(cmd, env) as proc:
        if _wait_healthy(f"{url}/api/health", proc):
            console.print(f"[green]Prefect UI[/green]  {url}")
            console.print(f"in other shells:  export PREFECT_API_URL={url}/api")
            console.print("then:             bidsflow serve --recipe recipes/demo.yaml")
        status = exit_status(proc.wait())
    raise typer.Exit(status)


def _wait_healthy(url: str, proc, timeout: float = 180.0) -> bool:
    """Returns True once `url` answers 200, False if the process ended first."""
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(0.5)
    return False


@app.command()
def serve(
    recipe: Path = typer.Option(Path("recipes/demo.yaml"), "--recipe", "-r", help="Default recipe of the forms."),
    schedule: bool = typer.Option(True, help="Give the pipeline its example nightly cron schedule."),
):
    """Serve the pipeline, `select` (select + fine-tune + evaluate) and every step as deployments."""
    from bidsml.errors import BidsError
    from flows.serve import serve_all

    try:
        serve_all(str(recipe), schedule)
    except BidsError as err:
        _fail(err)


@app.command()
def runs(run_root: Path = typer.Option(Path("runs"), help="Run root to list.")):
    """List runs and their artifacts."""
    from storage.runs import MAIN, list_runs

    recs = list_runs(run_root.resolve())
    if not recs:
        console.print(f"no runs under {run_root}")
        return
    table = Table("run", "recipe", "finished", "artifacts", "report")
    for r in recs:
        flat = [
            f"{k}{'' if n == MAIN else '/' + n}:{x['digest'][:8]}" for k, by in r["refs"].items() for n, x in by.items()
        ]
        table.add_row(
            r["run_id"][:8], r["recipe"]["name"], r.get("finished_at", ""), "\n".join(flat), r.get("report", "")
        )
    console.print(table)


@app.command()
def query(
    sql: list[str] = typer.Argument(..., help="SQL over the run's stores (tables, views, selections)."),
    run: str = typer.Option("latest", "--run", help="The run: 'latest' or a run id (prefix)."),
    run_root: Path = typer.Option(Path("runs"), help="Run root holding the run records."),
    limit: int = typer.Option(50, help="Rows to print."),
):
    """Run SQL against a run's influence store and selections.

    Tables: train_examples, val_examples, checkpoints, column_stats, task_stats.
    Views: selections, selection_composition, and, over every score (read from
    the store's matrix in place, nothing written): influence,
    normalized_influence, task_influence, top_train_for_val, top_train_for_task.
    """
    import duckdb

    from bidsml.errors import BidsError
    from storage.query import open_run
    from storage.runs import load_run

    if len(sql) == 2:  # the earlier form `bidsflow query RUN SQL`: still understood
        run, sql = sql[0], sql[1:]
        console.print(f"[dim]note: name the run with --run {run} (bidsflow query SQL --run RUN)[/dim]")
    if len(sql) != 1:
        _fail(typer.BadParameter(f"expected one SQL statement (quoted), got {len(sql)} arguments"))
    sql = sql[0]
    try:
        con = open_run(load_run(run_root.resolve(), run))
    except (BidsError, FileNotFoundError) as err:
        _fail(err)
    try:
        rel = con.sql(sql)
        if rel is None:
            return
        cols, rows = rel.columns, rel.limit(limit).fetchall()
    except duckdb.CatalogException as err:
        # each name once (a view over an attached store is listed under both catalogs)
        names = sorted({r[0] for r in con.sql("SELECT table_name FROM information_schema.tables").fetchall()})
        _fail(ValueError(f"{str(err).splitlines()[0]}\n  tables and views of this run: {', '.join(names)}"))
    except duckdb.Error as err:
        _fail(err)
    table = Table(*cols)
    for r in rows:
        table.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in r])
    console.print(table)


@app.command()
def validate(
    run: str = typer.Option("latest", "--run", help="The run to check: 'latest' or a run id (prefix)."),
    k: int | None = typer.Option(None, "--k", help="Rows per subset and rows removed (default: the run's budget)."),
    seeds: int = typer.Option(3, "--seeds", help="Probe seeds: every arm is fine-tuned once per seed."),
    lds: int = typer.Option(0, "--lds", help="Also train N models on random halves and report the LDS (0: skip)."),
    run_root: Path = typer.Option(Path("runs"), "--run-root", help="Run root holding the run's records."),
):
    """Does influence work on my data? Fine-tunes on each target's top-k, bottom-k and random rows (and removals)."""
    from bidsml.errors import BidsError
    from flows.validate import validate as validate_flow

    try:
        with live_display():
            out = validate_flow(run=run, k=k, seeds=seeds, lds=lds, run_root=str(run_root))
    except (BidsError, FileNotFoundError) as err:
        _fail(err)
    table = Table(title=f"influence check of run {out['run']} (k = {out['k']}; gold NLL differences, 95% CI)")
    for col in ("task", "top - random", "bottom - random", "remove top - remove random", "verdict"):
        table.add_column(col)
    for r in out["tasks"]:
        cells = [
            f"{r[key]:+.4f} [{r[key + '_lo']:+.4f}, {r[key + '_hi']:+.4f}]"
            for key in ("top_minus_random_nll", "bottom_minus_random_nll", "removal_top_minus_random_nll")
        ]
        table.add_row(r["task"], *cells, r["verdict"])
    console.print(table)
    if "lds" in out:
        console.print(
            f"LDS over {out['lds_models']} half-pool models: {out['lds']:.3f} [{out['lds_lo']:.3f}, {out['lds_hi']:.3f}]"
        )
    console.print(f"[green]done[/green] in {out['seconds']:.1f}s  outputs: {out['outputs']}")


@app.command("deployments")
def deployments_file(
    write: bool = typer.Option(False, "--write", help="Rewrite deployments/prefect.yaml (else: check it is current)."),
) -> None:
    """deployments/prefect.yaml from the step declarations: --write rewrites it; without, exit 1 when it is stale."""
    from flows.deploy_spec import PREFECT_YAML, render, write as write_spec

    if write:
        changed = write_spec()
        console.print(f"{PREFECT_YAML}: {'rewritten' if changed else 'already current'}")
        return
    if not PREFECT_YAML.exists() or PREFECT_YAML.read_text() != render():
        console.print(f"[red]{PREFECT_YAML} is stale:[/red] run `bidsflow deployments --write`")
        raise typer.Exit(1)
    console.print(f"{PREFECT_YAML}: current ({render().count('- name: step-')} step deployments)")


@app.command("readme-results")
def readme_results(
    json_path: Path = typer.Option(Path("results/evidence-cpu.json"), "--json", help="The evidence experiment's JSON."),
    readme: Path = typer.Option(Path("README.md"), "--readme", help="The README whose result block is rewritten."),
) -> None:
    """Writes the README's evidence result (between its evidence-result markers) from the experiment's JSON."""
    from flows.readme_results import update_readme

    try:
        changed = update_readme(readme, json_path)
    except (OSError, ValueError, KeyError) as err:
        _fail(err)
    console.print(f"{readme}: {'result block rewritten from ' + str(json_path) if changed else 'already up to date'}")


@app.command("select")
def select_cmd(
    method: str = typer.Option(..., help="Selection method (registered in `bidsml.selectors`)."),
    budget: float = typer.Option(..., help="A count (>= 1) or a fraction of the pool (< 1)."),
    out: Path = typer.Option(..., help="Output JSON: {'selected': [row indices in selection order], ...}."),
    scores: Path | None = typer.Option(None, help="Raw influence matrix (N x M .npy)."),
    tasks: Path | None = typer.Option(None, help="JSON list of the M validation task labels (with --scores)."),
    run: str | None = typer.Option(None, help="Or: a run id / 'latest', to use its influence store."),
    run_root: Path = typer.Option(Path("runs"), help="Run root holding the run records (with --run)."),
    seed: int = typer.Option(0, help="Seed (random method)."),
):
    """Run one selection method on a raw matrix or on a run's influence store (no Prefect)."""
    import numpy as np

    from bidsml.errors import BidsError, SelectionError
    from bidsml.selectors import select

    try:
        if (scores is None) == (run is None):
            raise SelectionError("give either --scores with --tasks, or --run")
        if scores is not None:
            if tasks is None:
                raise SelectionError("--scores needs --tasks (a JSON list of task labels)")
            for p in (scores, tasks):
                if not p.exists():
                    raise SelectionError(f"file not found: {p}")
            A = np.load(scores)
            labels = json.loads(tasks.read_text())
            if not isinstance(labels, list) or not all(isinstance(t, str) for t in labels):
                raise SelectionError(f"{tasks}: expected a JSON list of task labels (strings)")
            ids = None
        else:
            from bidsml.selectors import get_selector, run_selector
            from tasks.selection import SelectionParams, rounds_of, selector_inputs
            from storage.influence_store import load_influence_tables
            from storage.runs import load_run, run_ref

            rec = load_run(run_root.resolve(), run)
            needs = get_selector(method).needs
            if rounds_of(SelectionParams(method=method)) > 1:
                raise SelectionError(
                    f"{method!r} fine-tunes between rounds: name it in a recipe's selection.methods (`bidsflow run`) "
                    "or run the `select` deployment"
                )
            train, val = load_influence_tables(run_ref(rec, "influence").path)  # the matrix: selector_inputs
            labels, ids = val["task"].tolist(), train["id"].tolist()
            how = {  # the per-run artifacts a selector may need, and what builds them
                "representations": f"add {method!r} to its recipe's selection.methods",
                "degradation": f"give its recipe a `prune` section, add {method!r} to selection.methods",
            }
            side = {}
            for kind in [k for k in how if k in needs]:
                if kind not in rec["refs"]:
                    raise SelectionError(
                        f"method {method!r} needs the {kind} artifact, which run {rec['run_id']} did not build: "
                        f"{how[kind]} and rerun (cached steps are reused)"
                    )
                side[kind] = run_ref(rec, kind)
            options = (rec["recipe"].get("selection") or {}).get("options", {}).get(method, {})
            inputs = selector_inputs(
                method,
                options,
                labels,
                run_ref(rec, "influence"),
                side.get("representations"),
                run_ref(rec, "data"),
                degradation=side.get("degradation"),
            )
            n = len(train)
        if scores is not None:
            rows = select(method, A, labels, budget, seed)
        else:
            rows = run_selector(method, inputs, budget, seed)
    except (BidsError, FileNotFoundError, ValueError) as err:
        _fail(err)  # nothing written
    n = int(A.shape[0]) if scores is not None else n
    result = {"selected": rows.tolist(), "method": method, "budget": budget, "k": len(rows), "n": n}
    if ids is not None:
        result["ids"] = [ids[i] for i in rows]
    out.write_text(json.dumps(result))
    console.print(f"selected {len(rows)} of {n} rows with {method} -> {out}")


@app.command()
def lineage(
    artifact: str = typer.Argument(
        ..., help="Artifact identity or digest (prefix), its folder name, or a run id (prefix) / 'latest'."
    ),
    run_root: Path = typer.Option(Path("runs"), help="Run root holding the lineage catalog."),
    mermaid_out: bool = typer.Option(False, "--mermaid", help="Print the graph as mermaid instead."),
):
    """Print the upstream graph of an artifact or a whole run: producing step, runs, parameters, inputs."""
    from storage.lineage import mermaid, run_lineage, upstream
    from storage.refs import ArtifactRef
    from storage.runs import list_runs, load_run

    root = run_root.resolve()
    recs = upstream(root, artifact)
    if not recs and (artifact == "latest" or any(r["run_id"].startswith(artifact) for r in list_runs(root))):
        flat = [x for by in load_run(root, artifact)["refs"].values() for x in by.values()]
        recs = run_lineage(root, [ArtifactRef.model_validate(r) for r in flat])
    if not recs:
        _fail(FileNotFoundError(f"no artifact or run {artifact!r} in {run_root}"))
    if mermaid_out:
        print(mermaid(recs))
        return
    for r in recs:
        runs = [f"{x['run_id']} (in {x.get('root_run_id') or '-'})" for x in r["runs"]]
        console.print(f"[bold]{r['kind']}[/bold] {r['digest'][:16]} by step {r['step']}", highlight=False)
        console.print(f"   flow runs: {', '.join(runs) or '-'}", highlight=False)
        console.print(f"   {r['uri']}", highlight=False, soft_wrap=True)
        console.print(f"   params: {json.dumps(r['params'], default=str)[:600]}", highlight=False, soft_wrap=True)
        for i in r["inputs"]:
            console.print(f"   <- {i['kind']} {i['digest'][:16]}", highlight=False)
        for src in r.get("rows_from", []):
            console.print(f"   <- rows copied from {r['kind']} {src[:16]} (identity)", highlight=False)


if __name__ == "__main__":
    app()
