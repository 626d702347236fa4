"""`bidsflow`: run the pipeline, one step, or inspect runs and lineage."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="BIDS data selection as cached Prefect flows.", no_args_is_help=True)
console = Console()


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
    console.print(f"[red]error:[/red] {err}")
    raise typer.Exit(2)


@app.command()
def run(
    recipe: Path = typer.Option(..., "--recipe", "-r", help="Recipe YAML file."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe value: KEY=VALUE (dotted key, YAML value)."),
    refresh: list[str] = typer.Option([], "--refresh", help="Recompute this step even if cached (repeatable)."),
):
    """Run the whole pipeline (every step cached)."""
    from bidsml.errors import BidsError

    try:
        rec = _recipe(recipe, set_)
    except BidsError as err:
        _fail(err)
    from flows.pipeline import pipeline

    t = time.time()
    try:
        out = pipeline(rec, refresh=refresh or None)
    except BidsError as err:
        _fail(err)
    console.print(f"[green]done[/green] in {time.time() - t:.1f}s  run {out['run_id']}")
    console.print(f"report:      {out['report']}")
    console.print(f"evaluation:  {out['evaluation']}")
    for name, path in out["subsets"].items():
        console.print(f"subset {name}: {path}")


@app.command()
def step(
    name: str = typer.Argument(..., help="data | warmup | features | influence | diagnose | represent | select | finetune | evaluate"),
    recipe: Path = typer.Option(..., "--recipe", "-r", help="Recipe YAML file (the run root and settings)."),
    from_run: str = typer.Option("latest", "--from-run", help="Run record whose artifacts feed this step."),
    method: Optional[str] = typer.Option(None, help="select: the method."),
    budget: Optional[float] = typer.Option(None, help="select: a count (>=1) or fraction (<1)."),
    selection: Optional[str] = typer.Option(None, help="finetune: 'method@budget' of a selection in the run."),
    adapter: Optional[str] = typer.Option(
        None, help="evaluate: 'method@budget' of a fine-tune in the run; base model if unset."
    ),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe value: KEY=VALUE."),
    refresh: bool = typer.Option(False, help="Recompute even if cached."),
):
    """Run one step on its own, from the artifacts of an existing run."""
    from bidsml.errors import BidsError
    from storage.refs import ArtifactRef
    from storage.runs import load_run

    try:
        rec = _recipe(recipe, set_)
        record = load_run(Path(rec.run_root).resolve(), from_run) if name != "data" else {"refs": {}}
    except (BidsError, FileNotFoundError) as err:
        _fail(err)
    from flows.steps import STEP_FLOWS

    refs = record["refs"]

    def ref(key, sub=None):
        try:
            r = refs[key] if sub is None else refs[key][sub]
        except KeyError:
            _fail(
                KeyError(
                    f"run {record.get('run_id')} has no {key}{'' if sub is None else ' ' + sub}; have {list(refs.get(key, {})) if sub else list(refs)}"
                )
            )
        return ArtifactRef.model_validate(r)

    flow = STEP_FLOWS.get(name)
    if flow is None:
        _fail(ValueError(f"unknown step {name!r}; steps: {', '.join(STEP_FLOWS)}"))
    args = {
        "data": lambda: (rec,),
        "warmup": lambda: (rec, ref("data")),
        "features": lambda: (rec, ref("data"), ref("warmup")),
        "influence": lambda: (rec, ref("data"), ref("warmup"), ref("features")),
        "represent": lambda: (rec, ref("data")),
        "diagnose": lambda: (rec, ref("influence")),
        "select": lambda: (
            rec,
            ref("data"),
            ref("influence"),
            method or rec.selection.methods[0],
            budget or rec.selection.budgets[0],
            ref("representations") if (method or rec.selection.methods[0]) == "rds" else None,
        ),
        "finetune": lambda: (rec, ref("selections", selection or next(iter(refs["selections"])))),
        "evaluate": lambda: (rec, ref("data"), ref("finetunes", adapter) if adapter else None),
    }[name]()
    try:
        out = flow(*args, refresh=refresh)
    except BidsError as err:
        _fail(err)
    console.print_json(json.dumps(out.model_dump()))


@app.command()
def runs(run_root: Path = typer.Option(Path("runs"), help="Run root to list.")):
    """List runs and their artifacts."""
    from storage.runs import list_runs

    recs = list_runs(run_root.resolve())
    if not recs:
        console.print(f"no runs under {run_root}")
        return
    table = Table("run", "recipe", "finished", "artifacts", "report")
    for r in recs:
        refs = r["refs"]
        flat = []
        for k, v in refs.items():
            if isinstance(v, dict) and "digest" not in v:
                flat += [f"{k}/{n}:{x['digest'][:8]}" for n, x in v.items()]
            else:
                flat.append(f"{k}:{v['digest'][:8]}")
        table.add_row(
            r["run_id"][:8], r["recipe"]["name"], r.get("finished_at", ""), "\n".join(flat), r.get("report", "")
        )
    console.print(table)


@app.command()
def query(
    run: str = typer.Argument(..., help="Run id (prefix) or 'latest'."),
    sql: str = typer.Argument(..., help="SQL over the run's stores (tables, views, selections)."),
    run_root: Path = typer.Option(Path("runs"), help="Run root holding the run records."),
    limit: int = typer.Option(50, help="Rows to print."),
):
    """Run SQL against a run's influence store and selections.

    Tables: train_examples, val_examples, checkpoints, influence. Views:
    normalized_influence, task_influence, task_stats, top_train_for_val,
    top_train_for_task, selections, selection_composition.
    """
    import duckdb

    from bidsml.errors import BidsError
    from storage.query import open_run
    from storage.runs import load_run

    try:
        con = open_run(load_run(run_root.resolve(), run))
    except (BidsError, FileNotFoundError) as err:
        _fail(err)
    try:
        rel = con.sql(sql)
        if rel is None:
            return
        cols, rows = rel.columns, rel.limit(limit).fetchall()
    except duckdb.Error as err:
        _fail(err)
    table = Table(*cols)
    for r in rows:
        table.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in r])
    console.print(table)


@app.command("select")
def select_cmd(
    method: str = typer.Option(..., help="Selection method (see `bidsml.selection.METHODS`)."),
    budget: float = typer.Option(..., help="A count (>= 1) or a fraction of the pool (< 1)."),
    out: Path = typer.Option(..., help="Output JSON: {'selected': [row indices in selection order], ...}."),
    scores: Optional[Path] = typer.Option(None, help="Raw influence matrix (N x M .npy)."),
    tasks: Optional[Path] = typer.Option(None, help="JSON list of the M validation task labels (with --scores)."),
    run: Optional[str] = typer.Option(None, help="Or: a run id / 'latest', to use its influence store."),
    run_root: Path = typer.Option(Path("runs"), help="Run root holding the run records (with --run)."),
    seed: int = typer.Option(0, help="Seed (random method)."),
):
    """Run one selection method on a raw matrix or on a run's influence store (no Prefect)."""
    import numpy as np

    from bidsml.errors import BidsError, SelectionError
    from bidsml.selection import select

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
            from storage.influence_store import load_influence
            from storage.runs import load_run

            rec = load_run(run_root.resolve(), run)
            A, train, val = load_influence(Path(rec["refs"]["influence"]["uri"]))
            labels, ids = val["task"].tolist(), train["id"].tolist()
        rows = select(method, A, labels, budget, seed)
    except (BidsError, FileNotFoundError, ValueError) as err:
        _fail(err)  # nothing written
    result = {"selected": rows.tolist(), "method": method, "budget": budget, "k": len(rows), "n": int(A.shape[0])}
    if ids is not None:
        result["ids"] = [ids[i] for i in rows]
    out.write_text(json.dumps(result))
    console.print(f"selected {len(rows)} of {A.shape[0]} rows with {method} -> {out}")


@app.command()
def lineage(
    artifact: str = typer.Argument(..., help="Artifact identity or digest (prefix), or its folder name."),
    run_root: Path = typer.Option(Path("runs"), help="Run root holding the lineage catalog."),
):
    """Print the upstream graph of an artifact: producing step, runs, parameters, inputs."""
    from storage.lineage import upstream

    recs = upstream(run_root.resolve(), artifact)
    if not recs:
        _fail(FileNotFoundError(f"no artifact {artifact!r} in {run_root}/lineage"))
    for r in recs:
        console.print(
            f"[bold]{r['kind']}[/bold] {r['digest'][:16]} by step {r['step']} runs={[x['run_id'][:8] for x in r['runs']]}"
        )
        console.print(f"   {r['uri']}")
        console.print(f"   params: {json.dumps(r['params'], default=str)[:300]}")
        for i in r["inputs"]:
            console.print(f"   <- {i['kind']} {i['digest'][:16]}")


if __name__ == "__main__":
    app()
