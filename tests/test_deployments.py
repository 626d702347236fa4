"""Deployments: the pipeline with its nightly schedule and the recipe as a parameter, one per step."""

from pathlib import Path

from deployments.serve import NIGHTLY, deployments

RECIPE = Path(__file__).parents[1] / "recipes" / "tiny.yaml"


def test_serve_builds_pipeline_and_step_deployments():
    deps = {d.name: d for d in deployments(str(RECIPE))}
    assert set(deps) == {
        "bids-pipeline",
        "select",
        *(
            f"step-{s}"
            for s in (
                "data",
                "warmup",
                "features",
                "influence",
                "represent",
                "diagnose",
                "select",
                "finetune",
                "evaluate",
            )
        ),
    }
    pipe = deps["bids-pipeline"]
    assert pipe.parameters["recipe"]["name"] == "tiny"
    assert any(getattr(s.schedule, "cron", None) == NIGHTLY for s in pipe.schedules)
    # the recipe is a typed parameter: the UI renders a form from this schema
    from prefect.utilities.callables import parameter_schema

    from flows.pipeline import pipeline

    schema = parameter_schema(pipeline.fn).model_dump()
    assert set(schema["properties"]) == {"recipe", "refresh"}
    assert "Recipe" in schema["definitions"] and "selection" in schema["definitions"]["Recipe"]["properties"]
    assert pipe.entrypoint.endswith("flows/pipeline.py:pipeline"), pipe.entrypoint

    # the select deployment: one method and budget as form fields next to the recipe
    from flows.pipeline import reselect

    schema = parameter_schema(reselect.fn).model_dump()
    assert set(schema["properties"]) == {"recipe", "method", "budget", "refresh"}
    assert deps["select"].parameters["recipe"]["name"] == "tiny" and not deps["select"].schedules
    # step flows need only the recipe: their inputs default to the latest run's artifacts
    from flows.steps import select_flow

    step = parameter_schema(select_flow.fn).model_dump()
    assert step["required"] == ["recipe"]


def test_forms_offer_dropdowns_descriptions_and_no_internal_refs():
    """What the UI's run form shows: methods and steps as choices, every field described, no ArtifactRef inputs."""
    from prefect.utilities.callables import parameter_schema

    from bidsml.selectors import SELECTORS
    from flows.pipeline import pipeline, reselect
    from flows.steps import UI_STEP_FLOWS

    schema = parameter_schema(reselect.fn).model_dump()
    method = schema["properties"]["method"]
    enum = method.get("enum") or schema["definitions"].get(method.get("$ref", "").split("/")[-1], {}).get("enum")
    assert enum is not None and set(enum) == set(SELECTORS), method
    refresh = parameter_schema(pipeline.fn).model_dump()["properties"]["refresh"]
    assert "features" in str(refresh) and "enum" in str(refresh), refresh
    for name, fl in {"pipeline": pipeline, "select": reselect, **UI_STEP_FLOWS}.items():
        props = parameter_schema(fl.fn).model_dump()["properties"]
        for field, spec in props.items():
            assert spec.get("description"), (name, field)
        assert not {"data", "warm", "feats", "infl", "reps", "selection", "adapter"} & set(props), (name, props)
    # the fine-tune form says fine-tune things, not the warmup's
    from bidsml.config import Recipe

    recipe_schema = Recipe.model_json_schema()["$defs"]
    assert "checkpoint" not in recipe_schema["TrainConfig"]["properties"]["epochs"]["description"]
    assert "checkpoint" in recipe_schema["WarmupConfig"]["properties"]["epochs"]["description"]


def test_prefect_yaml_entrypoints_are_flows_and_cover_every_step():
    import yaml
    from prefect.flows import load_flow_from_entrypoint

    from flows.steps import UI_STEP_FLOWS as STEP_FLOWS

    spec = yaml.safe_load((Path(__file__).parents[1] / "deployments" / "prefect.yaml").read_text())
    names = {d["name"] for d in spec["deployments"]}
    expected = {"bids-pipeline": "bids-pipeline", "select": "select-finetune-evaluate"}
    expected |= {f"step-{s}": f.name for s, f in STEP_FLOWS.items()}
    assert {"bids-pipeline", "select"} | {f"step-{s}" for s in STEP_FLOWS} <= names
    for d in spec["deployments"]:
        fl = load_flow_from_entrypoint(str(Path(__file__).parents[1] / d["entrypoint"]))
        assert fl.name == expected[d["name"]], (d["name"], fl.name)
        assert d["work_pool"]["name"] in {"bids-cpu", "bids-gpu"}
