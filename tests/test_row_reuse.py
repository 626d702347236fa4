"""Per-row reuse (storage/row_reuse.py): which earlier artifact each row of a grown pool is copied from."""

import json

import numpy as np

from bidsml.data.examples import Example
from storage.row_reuse import find_row_sources, row_digests, save_row_digests


def _ex(i, text=None):
    return Example(
        id=f"s/{i}",
        source="s",
        messages=[{"role": "user", "content": text or f"q{i}"}, {"role": "assistant", "content": "a"}],
    )


def _publish(root, identity, space, pool, digests):
    folder = root / "artifacts" / "features" / identity
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text(
        json.dumps({"identity": identity, "inputs": {"inputs": {"data": pool}}, "summary": {"row_space": space}})
    )
    for split, d in digests.items():
        save_row_digests(folder, split, d)
    return folder


def test_row_digests_follow_the_messages_only():
    a, b = row_digests([_ex(0), _ex(1)]), row_digests([_ex(7, "q0")])  # another id, the same content
    assert a.dtype == np.uint64 and a[0] != a[1] and a[0] == b[0]


def test_a_grown_pool_takes_each_old_row_from_the_artifact_that_holds_it(tmp_path):
    old = row_digests([_ex(i) for i in range(10)])
    _publish(tmp_path, "A", "space1", "poolA", {"train": old, "val": old[:2]})
    _publish(tmp_path, "X", "other-space", "poolX", {"train": old, "val": old[:2]})  # another warmup / k: never
    grown = row_digests([_ex(i) for i in [3, 4, 20, 0, 21, 9]])
    src = find_row_sources(tmp_path, "features", "space1", {"train": grown, "val": old[:2]}, "poolB")
    assert src.identities == ["A"]
    assert src.lookup("train") == {0: (0, 3), 1: (0, 4), 3: (0, 0), 5: (0, 9)}  # rows 2 and 4 are new
    assert src.count("train") == 4 and src.taken_whole("val", 2) == 0 and src.taken_whole("train", 6) is None


def test_sources_are_greedy_and_a_rerun_gets_the_sources_it_had(tmp_path):
    rows = row_digests([_ex(i) for i in range(30)])
    _publish(tmp_path, "A", "s", "poolA", {"train": rows[:10]})
    _publish(tmp_path, "B", "s", "poolB", {"train": rows[5:25]})
    src = find_row_sources(tmp_path, "features", "s", {"train": rows}, "poolC")
    assert src.identities == ["B", "A"]  # B holds 20 of ours, then A the 5 B lacks
    assert src.summary()["by_source"] == {"B": {"train": 20}, "A": {"train": 5}}
    # the build for poolC is published (naming its sources); a newer artifact holding every row appears
    folder = _publish(tmp_path, "C", "s", "poolC", {"train": rows})
    meta = json.loads((folder / "meta.json").read_text())
    meta["summary"]["reused_from"] = src.summary()
    (folder / "meta.json").write_text(json.dumps(meta))
    _publish(tmp_path, "D", "s", "poolD", {"train": rows})
    again = find_row_sources(tmp_path, "features", "s", {"train": rows}, "poolC")
    assert again.identities == ["B", "A"] and again.lookup("train") == src.lookup("train")
    # a new pool prefers the artifact with every row
    assert find_row_sources(tmp_path, "features", "s", {"train": rows}, "poolE").identities == ["C"]
