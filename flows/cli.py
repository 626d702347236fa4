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
    name: str = typer.Argument(..., help="data | warmup | features | influence | select | finetune | evaluate"),
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
        "select": lambda: (
            rec,
            ref("data"),
            ref("influence"),
            method or rec.selection.methods[0],
            budget or rec.selection.budgets[0],
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
