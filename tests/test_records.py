"""Run records and the lineage catalog: what a run used, and the upstream graph of any artifact."""

import pytest

from bidsml.errors import ArtifactError
from storage.lineage import find_record, mermaid, record_artifact, run_lineage, upstream
from storage.refs import ArtifactRef
from storage.runs import list_runs, load_run, run_ref, save_run_record


def _ref(kind, ident, digest=None):
    return ArtifactRef(kind=kind, identity=ident * 4, uri=f"/r/artifacts/{kind}/{ident}", digest=(digest or ident) * 4)


def test_run_records_round_trip_and_latest(tmp_path):
    data = _ref("data", "d1")
    save_run_record(
        tmp_path,
        "run-a",
        {"name": "x"},
        {"data": {"main": data}, "selection": {"bids@8": _ref("selection", "s1")}},
        {"finished_at": "2026-01-01T00:00:00"},
    )
    save_run_record(tmp_path, "run-b", {"name": "y"}, {"data": {"main": data}}, {"finished_at": "2026-01-02T00:00:00"})
    assert [r["run_id"] for r in list_runs(tmp_path)] == ["run-a", "run-b"]
    assert load_run(tmp_path, "latest")["run_id"] == "run-b"
    rec = load_run(tmp_path, "run-a")
    assert run_ref(rec, "selection", "bids@8") == _ref("selection", "s1")
    assert run_ref(rec, "data") == data and run_ref(rec, "selection") == _ref("selection", "s1")
    with pytest.raises(ArtifactError, match=r"run run-a has no selection 'less@8'; it has \['bids@8'\]"):
        run_ref(rec, "selection", "less@8")
    with pytest.raises(ArtifactError, match=r"run run-b has no influence artifact; it has \['data'\]"):
        run_ref(load_run(tmp_path, "run-b"), "influence")
    with pytest.raises(FileNotFoundError, match="no run 'zzz'"):
        load_run(tmp_path, "zzz")
    with pytest.raises(FileNotFoundError, match="run `bidsflow run` first"):
        load_run(tmp_path / "empty", "latest")


def test_lineage_walks_upstream_once_and_records_each_run(tmp_path):
    data, warm, sel = _ref("data", "d1"), _ref("warmup", "w1"), _ref("selection", "s1")
    record_artifact(tmp_path, data, "data", "run1", {}, [])
    record_artifact(tmp_path, warm, "warmup", "run1", {"lora": {}}, [data])
    record_artifact(tmp_path, sel, "selection", "run1", {"method": "bids", "budget": 8}, [data, warm], label="bids@8")
    record_artifact(tmp_path, sel, "selection", "run2", {"method": "bids", "budget": 8}, [data, warm], label="bids@8")
    rec = find_record(tmp_path, sel.identity[:8])
    assert [r["run_id"] for r in rec["runs"]] == ["run1", "run2"]
    assert find_record(tmp_path, "/r/artifacts/warmup/w1")["kind"] == "warmup"  # by folder
    ups = upstream(tmp_path, sel.identity)
    assert [r["kind"] for r in ups] == ["selection", "data", "warmup"]
    assert len(run_lineage(tmp_path, [sel, warm])) == 3  # each artifact once
    graph = mermaid(ups)
    assert graph.startswith("flowchart LR") and "selection bids@8" in graph
    assert f"n{data.identity[:12]} --> n{sel.identity[:12]}" in graph and graph.count("-->") == 3


def test_records_of_earlier_versions_read_in_the_current_shape(tmp_path):
    """Before one shape: plural keys (`selections`, `evaluations`), single artifacts not labelled."""
    import json

    data, sel, ev = _ref("data", "d1"), _ref("selection", "s1"), _ref("evaluation", "e1")
    old = {
        "run_id": "old-run",
        "recipe": {"name": "x"},
        "refs": {
            "data": data.model_dump(),
            "diagnostics": _ref("diagnostics", "g1").model_dump(),
            "selections": {"bids@8": sel.model_dump()},
            "evaluations": {"base": ev.model_dump()},
        },
        "finished_at": "2025-01-01T00:00:00",
    }
    (tmp_path / "run-records").mkdir()
    (tmp_path / "run-records" / "old-run.json").write_text(json.dumps(old))
    rec = load_run(tmp_path, "old-run")
    assert set(rec["refs"]) == {"data", "diagnostics", "selection", "evaluation"}
    assert run_ref(rec, "data") == data and run_ref(rec, "selection", "bids@8") == sel
    assert run_ref(rec, "evaluation", "base") == ev
