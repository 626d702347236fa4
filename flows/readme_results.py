"""The README's evidence result, written from the experiment's JSON (never by hand).

`bidsflow readme-results` replaces the block between the README's
`<!-- evidence-result:begin -->` and `<!-- evidence-result:end -->` markers
with what `render` makes of `results/evidence-cpu.json`'s last line; a test
fails when the committed README differs from it, so the headline cannot
drift from the file it cites.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

BEGIN, END = "<!-- evidence-result:begin -->", "<!-- evidence-result:end -->"


def _ci(est: float, lo: float, hi: float) -> str:
    return f"{est:+.4f} [{lo:+.4f}, {hi:+.4f}]"


def render(json_path: Path, shown: str | None = None) -> str:
    """Returns the README's result block for the evidence JSON's last line (the primary budget's headline);
    `shown`: the JSON's path as the README names it (default: as given)."""
    json_path = Path(json_path)
    last = json.loads(json_path.read_text().strip().splitlines()[-1])
    shown_path = Path(shown or json_path)
    if "primary" in last:
        return _render_primary(last, shown_path)
    return _render_legacy(last, shown_path)


def _render_primary(last: dict, path: Path) -> str:
    seeds = "independent seeds" if last.get("seeds_independent") else "seeds SHARING one influence matrix"
    rows = [
        "| comparison (fixed in the recipe) | metric | estimate [95% CI] | per seed | Holm p |",
        "|---|---|---|---|---|",
    ]
    for p in last["primary"]:
        per_seed = ", ".join(f"{v:+.4f}" for v in p["per_seed"])
        rows.append(
            f"| {p['comparison']} | {p['metric']} | {_ci(p['estimate'], p['lo'], p['hi'])} | {per_seed} | "
            f"{p['holm_p']:.4f} |"
        )
    chance = "; ".join(
        f"{b} {v['accuracy']:.3f} vs chance {v['chance']:.3f} (difference [{v['lo']:+.3f}, {v['hi']:+.3f}])"
        for b, v in sorted(last.get("accuracy_above_chance_base", {}).items())
    )
    forms = ", ".join(f"{b} {f}" for b, f in sorted(last["formulation"].items()))
    return "\n".join(
        [
            f"Evidence experiment (`{path.as_posix()}`, last line; recipe sha256 `{last['recipe_sha256'][:12]}`), "
            f"budget {last['budget']}, {seeds}. Validity gate (oracle beats base and random): "
            f"**{'passed' if last['gate_passed'] else 'not passed'}**. Formulations: {forms}. Base model accuracy: "
            f"{chance or 'no multiple-choice benchmark'}.",
            "",
            *rows,
            "",
        ]
    )


def _render_legacy(last: dict, path: Path) -> str:
    def key(name: str) -> str:
        return _ci(last[name], last[f"{name}_lo"], last[f"{name}_hi"])

    return "\n".join(
        [
            f"The committed evidence run (`{path.as_posix()}`, last line: budget {last['budget']}) predates the "
            "current recipe and is **not evidence** by its rules: MMLU and ARC were scored by the NLL of one answer "
            "letter (SmolLM2-135M is at chance there), the seeds shared one warmup, projection and influence matrix "
            "(`--shared-influence`), and its comparisons were not fixed before the run. Its figures, macro gold NLL "
            f"per token: validity gate {'passed' if last['gate_passed'] else 'not passed'} (oracle - base "
            f"{key('oracle_minus_base_nll')}), BIDS - random {key('bids_minus_random_nll')}, LESS - random "
            f"{key('less_minus_random_nll')}. `recipes/evidence-cpu.yaml` now fixes its comparisons, scores MMLU "
            "and ARC in the cloze formulation, reads gold bits per byte and runs independent seeds; its rerun "
            "replaces this paragraph (`bidsflow readme-results`).",
            "",
        ]
    )


def update_readme(readme: Path, json_path: Path) -> bool:
    """Rewrites the README's result block from the JSON; returns whether the file changed."""
    text = Path(readme).read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{readme}: no {BEGIN} ... {END} block to write the result into")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    shown = os.path.relpath(Path(json_path).resolve(), Path(readme).resolve().parent)
    new = f"{head}{BEGIN}\n{render(json_path, shown)}{END}{tail}"
    if new != text:
        Path(readme).write_text(new)
    return new != text


def readme_block(readme: Path) -> str:
    """Returns what the README holds between the markers (without them)."""
    text = Path(readme).read_text()
    return text.split(BEGIN, 1)[1].split(END, 1)[0].removeprefix("\n")
