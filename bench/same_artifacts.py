"""Old code against new: the same recipe run by two versions of the project, every artifact file compared by sha256.

A refactor that says "behaviour unchanged" is checked with this: each version
runs the recipe in a fresh run root (its own Prefect home, no shared cache),
then every artifact of every run record is matched by step and label (e.g.
`evaluation` / `bids@8`, one record per seed) and its files compared by the
sha256 its manifest holds; the human-facing outputs (report tables, CSVs)
are compared too. The last line of the output is the JSON summary.

    python -m bench.same_artifacts --old 9f538b1 --recipe recipes/tiny.yaml \
        --set "selection.methods=[random,bids,kmq-iterative]" --out bench/results-same-artifacts.json

`--old` is a commit (checked out in a temporary git worktree); the new side is
this working tree as it is (uncommitted edits included).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# outputs whose text holds times or run ids (the step table, the run log): compared without them, or not at all
TIMED = {"report.md", "experiment.md", "lineage.mmd", "lineage.png", "recovery.json"}  # recovery.json: wall_s, build_s


def run_recipe(tree: Path, recipe: str, sets: list[str], work: Path) -> float:
    """Runs `bidsflow run` of the project at `tree` into work/runs; returns its wall seconds."""
    (work / "prefect").mkdir(parents=True, exist_ok=True)  # Prefect makes its home folder, not the folders above it
    env = {**os.environ, "PYTHONPATH": str(tree), "PREFECT_HOME": str(work / "prefect")}
    env |= {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    env.pop("PREFECT_API_URL", None)
    args = [sys.executable, "-m", "flows.cli", "run", "--recipe", str(ROOT / recipe)]
    args += ["--set", f"run_root={work / 'runs'}"] + [x for s in sets for x in ("--set", s)]
    t = time.time()
    out = subprocess.run(args, cwd=tree, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{tree}: bidsflow run failed\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return time.time() - t


def artifacts(run_root: Path) -> dict[str, dict]:
    """Returns {"<record seed tag> <step>/<label>": {identity, files: {name: sha256}}} of every run record."""
    out = {}
    for path in sorted((run_root / "run-records").glob("*.json")):
        record = json.loads(path.read_text())
        seed = record.get("recipe", {}).get("seed")
        for kind, by_label in record["refs"].items():
            for label, ref in by_label.items():
                manifest = json.loads((Path(ref["uri"]) / "manifest.json").read_text())
                files = {name: v["sha256"] for name, v in manifest.items() if name != "meta.json"}
                out[f"seed {seed} {kind}/{label}"] = {"identity": ref["identity"], "files": files}
    return out


def outputs(run_root: Path) -> dict[str, str]:
    """Returns {relative path: sha256} of the human-facing outputs (reports' folders), the timed ones left out."""
    out = {}
    for path in sorted(run_root.rglob("*")):
        rel = path.relative_to(run_root)
        # lineage/: one file per artifact identity (named by it, holding identities and times), not an output
        if not path.is_file() or rel.parts[0] in ("artifacts", "run-records", "prefect-results", ".caches", "lineage"):
            continue
        if path.name in TIMED or rel.parts[0].startswith("."):
            continue
        out[str(rel)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def compare(old: dict, new: dict) -> dict:
    only_old, only_new = sorted(set(old) - set(new)), sorted(set(new) - set(old))
    differ = {}
    for key in sorted(set(old) & set(new)):
        a, b = old[key], new[key]
        if a != b:
            if isinstance(a, dict):
                files = sorted(f for f in set(a["files"]) | set(b["files"]) if a["files"].get(f) != b["files"].get(f))
                differ[key] = {"identity_equal": a["identity"] == b["identity"], "files": files}
            else:
                differ[key] = "content differs"
    return {"compared": len(set(old) & set(new)), "only_old": only_old, "only_new": only_new, "differ": differ}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old", required=True, help="the commit to compare against (a git worktree of it is made)")
    ap.add_argument("--recipe", default="recipes/tiny.yaml")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="a recipe override, as bidsflow's --set")
    ap.add_argument("--out", help="also append the summary line to this JSON-lines file")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="same-artifacts-") as tmp:
        tmp = Path(tmp)
        old_tree = tmp / "old-tree"
        add = ["git", "worktree", "add", "--detach", str(old_tree), a.old]
        subprocess.run(add, cwd=ROOT, check=True, capture_output=True)
        try:
            old_s = run_recipe(old_tree, a.recipe, a.sets, tmp / "old")
            new_s = run_recipe(ROOT, a.recipe, a.sets, tmp / "new")
            arts = compare(artifacts(tmp / "old" / "runs"), artifacts(tmp / "new" / "runs"))
            outs = compare(outputs(tmp / "old" / "runs"), outputs(tmp / "new" / "runs"))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)], cwd=ROOT, capture_output=True)
    new_rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    summary = {
        "recipe": a.recipe,
        "sets": a.sets,
        "old": a.old,
        "new": new_rev.stdout.strip() + (" + uncommitted edits" if dirty else ""),
        "artifacts_compared": arts["compared"],
        "artifacts_same_files": arts["compared"] - sum(bool(d["files"]) for d in arts["differ"].values()),
        "artifacts": arts,
        "outputs_compared": outs["compared"],
        "outputs": outs,
        # contents: every artifact's files (by sha256) and every output; identities may change while contents stay
        "all_equal": not arts["only_old"]
        and not arts["only_new"]
        and not any(d["files"] for d in arts["differ"].values())
        and not any(outs[k] for k in ("only_old", "only_new", "differ")),
        "identities_changed": sorted(k for k, d in arts["differ"].items() if not d["identity_equal"]),
        "old_s": round(old_s, 1),
        "new_s": round(new_s, 1),
    }
    line = json.dumps(summary)
    if a.out:
        with open(a.out, "a") as f:
            f.write(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
