"""Deployments: the pipeline with its nightly schedule and the recipe as a parameter, one per step."""

from pathlib import Path

from flows.serve import NIGHTLY, deployments

RECIPE = Path(__file__).parents[1] / "recipes" / "tiny.yaml"


def test_serve_builds_pipeline_and_step_deployments():
    deps = {d.name: d for d in deployments(str(RECIPE))}
    from tasks.registry import STEPS

    assert set(deps) == {"bids-pipeline", "select", "validate", *(f"step-{s}" for s in STEPS)}
    assert {"step-data", "step-features", "step-evaluation", "step-probe", "step-tune"} <= set(deps)
    pipe = deps["bids-pipeline"]
    assert pipe.parameters["recipe"]["name"] == "tiny"
    assert any(getattr(s.schedule, "cron", None) == NIGHTLY for s in pipe.schedules)
    # the recipe is a typed parameter: the UI renders a form from this schema
    from prefect.utilities.callables import parameter_schema

    from flows.pipeline import pipeline

    schema = parameter_schema(pipeline.fn).model_dump()
    assert set(schema["properties"]) == {"recipe", "refresh", "recipe_path", "shared_influence"}
    assert schema["properties"]["recipe_path"]["default"] == "recipes/demo.yaml" and not schema.get("required")
    assert schema["properties"]["shared_influence"]["default"] is False  # a checkbox, off: per-seed influence
    assert "Recipe" in schema["definitions"] and "selection" in schema["definitions"]["Recipe"]["properties"]
    assert pipe.entrypoint.endswith("flows/pipeline.py:pipeline"), pipe.entrypoint

    # the select deployment: one method and budget as form fields next to the recipe
    from flows.pipeline import reselect

    schema = parameter_schema(reselect.fn).model_dump()
    assert set(schema["properties"]) == {"recipe", "method", "budget", "refresh", "recipe_path"}
    assert deps["select"].parameters["recipe"]["name"] == "tiny" and not deps["select"].schedules
    # step flows need only the recipe: their inputs default to the latest run's artifacts
    from flows.step_flows import STEP_FLOWS

    step = parameter_schema(STEP_FLOWS["selection"].fn).model_dump()
    assert step["required"] == ["recipe"]


def test_forms_offer_dropdowns_descriptions_and_no_internal_refs():
    """What the UI's run form shows: methods and steps as choices, every field described, no ArtifactRef inputs."""
    from prefect.utilities.callables import parameter_schema

    from bidsml.selectors import SELECTORS
    from flows.pipeline import pipeline, reselect
    from flows.step_flows import DEPLOYED

    schema = parameter_schema(reselect.fn).model_dump()
    method = schema["properties"]["method"]
    enum = method.get("enum") or schema["definitions"].get(method.get("$ref", "").split("/")[-1], {}).get("enum")
    assert enum is not None and set(enum) == set(SELECTORS), method
    refresh = parameter_schema(pipeline.fn).model_dump()["properties"]["refresh"]
    assert "features" in str(refresh) and "enum" in str(refresh), refresh
    from flows.validate import validate

    for name, fl in {"pipeline": pipeline, "select": reselect, "validate": validate, **DEPLOYED}.items():
        props = parameter_schema(fl.fn).model_dump()["properties"]
        for field, spec in props.items():
            assert spec.get("description"), (name, field)
        assert not {"data", "warm", "feats", "infl", "reps", "selection", "adapter"} & set(props), (name, props)
    # the fine-tune form says fine-tune things, not the warmup's
    from bidsml.config import Recipe

    recipe_schema = Recipe.model_json_schema()["$defs"]
    assert "checkpoint" not in recipe_schema["TrainConfig"]["properties"]["epochs"]["description"]
    assert "checkpoint" in recipe_schema["WarmupConfig"]["properties"]["epochs"]["description"]


def test_prefect_yaml_matches_the_step_declarations():
    """One deployment per declared step, its entrypoint a flow of that step, on the pool the step declares."""
    import importlib

    import yaml
    from prefect import Flow
    from prefect.flows import load_flow_from_entrypoint

    from tasks.registry import STEPS

    spec = yaml.safe_load((Path(__file__).parents[1] / "deployments" / "prefect.yaml").read_text())
    by_name = {d["name"]: d for d in spec["deployments"]}
    assert set(by_name) == {"bids-pipeline", "select", "validate"} | {f"step-{s}" for s in STEPS}, sorted(by_name)
    expected = {"bids-pipeline": "bids-pipeline", "select": "select-finetune-evaluate", "validate": "validate"}
    expected |= {f"step-{s}": f"step-{s}" for s in STEPS}
    loaded = set()  # Prefect loads one entrypoint of each file (it runs the file anew each time); the rest by name
    for d in spec["deployments"]:
        path, name = d["entrypoint"].split(":")
        if path in loaded:
            fl = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)
        else:
            fl = load_flow_from_entrypoint(str(Path(__file__).parents[1] / d["entrypoint"]))
            loaded.add(path)
        assert isinstance(fl, Flow) and fl.name == expected[d["name"]], (d["name"], fl.name)
    for name, step in STEPS.items():
        assert by_name[f"step-{name}"]["work_pool"]["name"] == f"bids-{step.pool}", name


def test_prefect_yaml_is_what_bidsflow_deployments_writes():
    """The committed file is derived from the declarations: a new step file without `--write` fails here."""
    from typer.testing import CliRunner

    from flows.cli import app
    from flows.deploy_spec import PREFECT_YAML, render

    assert PREFECT_YAML.read_text() == render(), "deployments/prefect.yaml is stale: run `bidsflow deployments --write`"
    res = CliRunner().invoke(app, ["deployments"])
    from tasks.registry import STEPS

    assert res.exit_code == 0 and f"current ({len(STEPS)} step deployments)" in res.output, res.output


def test_prefect_yaml_gives_every_deployment_something_to_run():
    """No `null` parameters (the server refuses them); the pipeline's cron runs the demo recipe file."""
    import yaml

    spec = yaml.safe_load((Path(__file__).parents[1] / "deployments" / "prefect.yaml").read_text())
    for d in spec["deployments"]:
        assert None not in (d.get("parameters") or {}).values(), d
    pipe = next(d for d in spec["deployments"] if d["name"] == "bids-pipeline")
    assert pipe["schedules"] and pipe["parameters"]["recipe_path"] == "recipes/demo.yaml"
    assert (Path(__file__).parents[1] / pipe["parameters"]["recipe_path"]).is_file()
    assert spec["pull"] == [{"deployments.pull.set_project_root": {}}]


def test_recipe_path_resolves_from_the_project_root_and_bad_files_name_field_and_file(tmp_path, monkeypatch):
    import pytest

    from bidsml.errors import RecipeError
    from flows.params import resolve_recipe

    monkeypatch.chdir(tmp_path)  # not the project: the project root is the fallback
    assert resolve_recipe(None, "recipes/tiny.yaml").name == "tiny"
    with pytest.raises(RecipeError, match=r"recipe_path = 'recipes/nope.yaml': no such recipe file"):
        resolve_recipe(None, "recipes/nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nselection: {budgets: [-3]}\n")
    with pytest.raises(RecipeError, match=r"(?s)recipe_path = '.*bad.yaml'.*selection.budgets = \[-3\]"):
        resolve_recipe(None, str(bad))


def test_pull_step_moves_a_run_to_the_project_root(tmp_path, monkeypatch):
    import pytest

    from bidsml.errors import RecipeError
    from deployments.pull import set_project_root

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BIDSFLOW_REPO", raising=False)
    assert set_project_root() == {"directory": str(Path(__file__).parents[1].resolve())}
    monkeypatch.setenv("BIDSFLOW_REPO", str(tmp_path))
    with pytest.raises(RecipeError, match="BIDSFLOW_REPO = .* holds no bidsflow project"):
        set_project_root()


def test_every_deployed_step_parameter_has_a_real_default():
    """A params field with a default_factory has no `default`: its form field would carry pydantic's sentinel."""
    import inspect

    from pydantic_core import PydanticUndefined

    from flows.step_flows import DEPLOYED

    for name, fl in DEPLOYED.items():
        for p in inspect.signature(fl.fn).parameters.values():
            assert p.default is not PydanticUndefined, f"step-{name}: parameter {p.name!r} has no default"
