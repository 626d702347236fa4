"""Run records and the lineage catalog: what a run used, and the upstream graph of any artifact."""

import pytest

from storage.lineage import find_record, mermaid, record_artifact, run_lineage, upstream
from storage.refs import ArtifactRef
from storage.runs import list_runs, load_run, save_run_record


def _ref(kind, ident, digest=None):
    return ArtifactRef(kind=kind, identity=ident * 4, uri=f"/r/artifacts/{kind}/{ident}", digest=(digest or ident) * 4)


def test_run_records_round_trip_and_latest(tmp_path):
    data = _ref("data", "d1")
    save_run_record(
        tmp_path,
        "run-a",
        {"name": "x"},
        {"data": data, "selections": {"bids@8": _ref("selection", "s1")}},
        {"finished_at": "2026-01-01T00:00:00"},
    )
    save_run_record(tmp_path, "run-b", {"name": "y"}, {"data": data}, {"finished_at": "2026-01-02T00:00:00"})
    assert [r["run_id"] for r in list_runs(tmp_path)] == ["run-a", "run-b"]
    assert load_run(tmp_path, "latest")["run_id"] == "run-b"
    rec = load_run(tmp_path, "run-a")
    assert ArtifactRef.model_validate(rec["refs"]["selections"]["bids@8"]) == _ref("selection", "s1")
    with pytest.raises(FileNotFoundError, match="no run 'zzz'"):
        load_run(tmp_path, "zzz")
    with pytest.raises(FileNotFoundError, match="run `bidsflow run` first"):
        load_run(tmp_path / "empty", "latest")


def test_lineage_walks_upstream_once_and_records_each_run(tmp_path):
    data, warm, sel = _ref("data", "d1"), _ref("warmup", "w1"), _ref("selection", "s1")
    record_artifact(tmp_path, data, "prepare_data", "run1", {}, [])
    record_artifact(tmp_path, warm, "warmup", "run1", {"lora": {}}, [data])
    record_artifact(tmp_path, sel, "select_subset", "run1", {"method": "bids", "budget": 8}, [data, warm])
    record_artifact(tmp_path, sel, "select_subset", "run2", {"method": "bids", "budget": 8}, [data, warm])
    rec = find_record(tmp_path, sel.identity[:8])
    assert [r["run_id"] for r in rec["runs"]] == ["run1", "run2"]
    assert find_record(tmp_path, "/r/artifacts/warmup/w1")["kind"] == "warmup"  # by folder
    ups = upstream(tmp_path, sel.identity)
    assert [r["kind"] for r in ups] == ["selection", "data", "warmup"]
    assert len(run_lineage(tmp_path, [sel, warm])) == 3  # each artifact once
    graph = mermaid(ups)
    assert graph.startswith("flowchart LR") and "select_subset bids@8" in graph
    assert f"n{data.identity[:12]} --> n{sel.identity[:12]}" in graph and graph.count("-->") == 3
