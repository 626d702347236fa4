"""The README's evidence result is written from results/evidence-cpu.json, never by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.readme_results import BEGIN, END, readme_block, render, update_readme

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_result_block_is_what_the_committed_json_renders():
    assert readme_block(ROOT / "README.md") == render(ROOT / "results" / "evidence-cpu.json", "results/evidence-cpu.json"), (
        "README.md's evidence result differs from results/evidence-cpu.json: run `bidsflow readme-results`"
    )


def test_a_new_format_json_renders_its_primary_comparisons_and_the_command_rewrites_only_the_block(tmp_path):
    last = {
        "budget": 0.05,
        "gate_passed": True,
        "seeds_independent": True,
        "recipe_sha256": "ab" * 32,
        "formulation": {"mmlu": "rc", "gsm8k": "generate"},
        "accuracy_above_chance_base": {"mmlu": {"accuracy": 0.31, "chance": 0.25, "lo": 0.02, "hi": 0.1, "n": 200}},
        "primary": [
            {
                "comparison": "bids - random",
                "metric": "bpb macro-average",
                "estimate": -0.0123,
                "lo": -0.02,
                "hi": -0.004,
                "per_seed": [-0.01, -0.015, -0.012],
                "holm_p": 0.012,
            },
        ],
    }
    js = tmp_path / "evidence.json"
    js.write_text(json.dumps({"budget": 0.1}) + "\n" + json.dumps(last) + "\n")
    text = render(js, "evidence.json")
    assert (
        "| bids - random | bpb macro-average | -0.0123 [-0.0200, -0.0040] | -0.0100, -0.0150, -0.0120 | 0.0120 |"
        in text
    )
    assert "independent seeds" in text and "**passed**" in text and "mmlu 0.310 vs chance 0.250" in text
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{BEGIN}\nold numbers\n{END}\nrest\n")
    assert update_readme(readme, js) and not update_readme(readme, js)
    assert readme.read_text() == f"intro\n{BEGIN}\n{text}{END}\nrest\n"
    readme.write_text("no block\n")
    with pytest.raises(ValueError, match="no <!-- evidence-result:begin -->"):
        update_readme(readme, js)
