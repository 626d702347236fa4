"""The influence check's report (`bidsflow validate`): its section, table, plot and summary files."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from bidsml.validate import plot_validation

SECTION = "## Does influence work on this run's data?"


def flat_summary(result: dict) -> dict:
    """Returns one flat record of the check: per task the three differences with their intervals and the verdicts,
    the run's chosen k and its worst-task fidelity, the LDS when measured, and the seconds it took."""
    out: dict = {}
    for r in result["tasks"]:
        for key in ("top_minus_random_nll", "bottom_minus_random_nll", "removal_top_minus_random_nll"):
            for suffix in ("", "_lo", "_hi"):
                out[f"{r['task']}_{key}{suffix}"] = round(r[key + suffix], 5)
        out[f"{r['task']}_verdict"] = r["verdict"]
    for key in ("k", "chosen_k", "worst_task_fidelity", "lds", "lds_lo", "lds_hi", "seconds"):
        if result.get(key) is not None:
            out[key] = result[key]
    return out


def markdown(result: dict, plot: str) -> str:
    """Returns the report section: what ran, the per-task table, the verdicts and the plot."""
    lines = [
        SECTION,
        "",
        f"Run `{result['run']}`: for each target, fine-tunes on the top-{result['k']} and "
        f"bottom-{result['k']} pool rows by the task's influence and on {result['k']} random rows; and on a "
        f"random base subset of {result['removal_base']} rows with its top {result['k']} or {result['k']} random "
        f"rows removed; every arm once per probe seed ({result['seeds']} seeds). Probe fine-tunes: lr "
        f"{result.get('probe_lr')}, {result.get('probe_epochs')} epochs ({result.get('probe_settings', 'the run')}"
        "). Gold NLL on the task's scored items (lower is better); each arm minus the same seed's random arm, "
        "hierarchical bootstrap (seeds, then items), 95% intervals; a task with fewer than "
        f"{result.get('min_items', 0)} scored items gets no verdict.",
        "",
        "| task | items | top - random | bottom - random | remove top - remove random | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["tasks"]:
        cells = [
            f"{r[key]:+.4f} [{r[key + '_lo']:+.4f}, {r[key + '_hi']:+.4f}]"
            for key in ("top_minus_random_nll", "bottom_minus_random_nll", "removal_top_minus_random_nll")
        ]
        lines.append(f"| {r['task']} | {r['n_items']} | {' | '.join(cells)} | {r['verdict']} |")
    if "lds" in result:
        lines += [
            "",
            f"Linear datamodeling score over {result['lds_models']} models trained on random halves: "
            f"{result['lds']:.3f} [{result['lds_lo']:.3f}, {result['lds_hi']:.3f}] ({result['lds_queries']} queries).",
        ]
    lines += ["", f"![validation]({plot})", ""]
    return "\n".join(lines)


def write_validation(out: Path, result: dict, report: Path) -> Path:
    """Writes validate.json / .csv / .md / .png and summary.json into `out`, and the section into the run's
    `report` (added, or replacing an earlier one) when it exists; returns validate.md."""
    out.mkdir(parents=True, exist_ok=True)
    plot_validation(result["tasks"], out / "validate.png")
    pd.DataFrame(result["tasks"]).to_csv(out / "validate.csv", index=False)
    (out / "validate.json").write_text(json.dumps(result, indent=1))
    (out / "summary.json").write_text(json.dumps(flat_summary(result)) + "\n")
    section = markdown(result, "validate.png")
    (out / "validate.md").write_text(section)
    if report.exists():  # the run's report gains (or replaces) the section
        head = report.read_text().split("\n" + SECTION)[0].rstrip("\n")
        report.write_text(head + "\n\n" + section.replace("](validate.png)", f"]({out.name}/validate.png)"))
    return out / "validate.md"
