"""Evaluation harness: batched log-likelihood scoring, batched generation, sandboxed tests.

Multiple-choice items (MMLU, ARC) are scored from one forward pass over
prompt + gold continuation: the option letter with the highest
log-probability after the prompt wins, and the same pass gives the gold
NLL (mean per-token negative log-likelihood, a smooth metric that small
models still move). Generation items (GSM8K, HumanEval, MBPP, BBH) are
decoded greedily in left-padded batches with a KV cache and stop sequences;
code runs in `bidsml.evaluation.sandbox`. See `bidsml.evaluation.benchmarks` for the protocols.

Two ways scoring avoids recomputing what it already knows: prompts sharing a
few-shot prefix encode it once (`prefix_groups`), and, with `TrunkStates`, the
hidden states entering the first LoRA-adapted layer (the "trunk", identical
for the base model and every fine-tune of adapters above it) are computed
once and reused, so each fine-tuned model only runs its adapted top layers.

One idea per module (import from the module, not this package: a step's
identity then covers only the code it runs):

- `scoring`: log-likelihood scoring (`continuation_logprobs`);
- `prefix`: shared-prefix reuse (`prefix_groups`);
- `trunk`: the shared trunk (`TrunkStates`, `trunk_layer`);
- `generation`: batched greedy decoding (`generate`, `cut_at_stop`);
- `answers`: answer rules (`final_number`, `score_generation`, `program`);
- `harness`: every item of a benchmark run end to end (`evaluate_benchmark_items`);
- `aggregate`: per-task, per-benchmark, macro and worst-task tables (`summarize`).
"""
