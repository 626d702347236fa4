"""The lm-eval backend's task index: the shipped tasks' folders vs lm-eval's whole catalogue.

    python -m bench.lm_eval_index --repeats 3 --out bench/results-lm-eval-index-cpu.json

Every evaluation process that scores with lm-eval builds a TaskManager. One
of the whole catalogue (lm-eval's default: every task YAML it ships) was the
baseline; the built-in benchmarks now read theirs from `shipped_task_manager`
(SHIPPED_FOLDERS). Each side is timed in a fresh process (import excluded),
`--repeats` times, side by side in one run; the last line is JSON with each
side's median seconds, the ratio and how many index entries each holds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import json, time
import lm_eval.tasks
from bidsml.evaluation.lm_eval_tasks import shipped_task_manager
t = time.perf_counter()
tm = {side}
print(json.dumps({{"s": time.perf_counter() - t, "entries": len(tm.task_index)}}))
"""
SIDES = {"catalogue": "lm_eval.tasks.TaskManager()", "shipped": "shipped_task_manager()"}


def time_side(side: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(side=SIDES[side])], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    runs = {side: [] for side in SIDES}
    for _ in range(args.repeats):  # alternated, so both sides see the same machine
        for side in SIDES:
            runs[side].append(time_side(side))
    med = {side: statistics.median(r["s"] for r in rs) for side, rs in runs.items()}
    result = {
        "catalogue_index_s": round(med["catalogue"], 3),
        "shipped_index_s": round(med["shipped"], 4),
        "speedup": round(med["catalogue"] / med["shipped"], 1),
        "catalogue_entries": runs["catalogue"][0]["entries"],
        "shipped_entries": runs["shipped"][0]["entries"],
        "repeats": args.repeats,
        "python": sys.version.split()[0],
    }
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
