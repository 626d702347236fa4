"""What a step is: one declaration (`Step`) and what its `build` function is given (`Build`).

A step turns input artifacts and a few recipe sections into one artifact of
kind `Step.name`. Its module declares

    STEP = Step(name="warmup", inputs=(Input("data"),), sections=("model", "lora", "warmup", "seed"),
                pool="gpu", build=build, doc="Trains the warmup LoRA ...")

and everything else is derived from the declarations: the Prefect flows and
deployments with their UI forms, `bidsflow step NAME`, the pipeline's step
list, run-record keys and lineage labels (see flows/).

The artifact's identity is the code of `build` (and of `identity`, when the
step declares one: what the sections do not say, such as file contents),
the declared recipe sections and the inputs' digests. `build` receives only
those sections (`b.recipe.<section>`; any other raises), so the identity and
the code cannot disagree. Progress, logs, UI tables and summaries go through
`Build`'s methods, whose code lives in flows/ and is not part of any identity.

Nothing here imports Prefect: a step's build runs in any process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel

# Recipe fields a step may declare. `execution` is never one: how a step runs does not change what it builds
# (every build can read it as `Build.execution`).
SECTIONS = (
    "model",
    "data",
    "lora",
    "warmup",
    "features",
    "finetune",
    "evaluation",
    "seed",
    "sampling_seed",
    "prune",
)


@dataclass(frozen=True)
class Input:
    """An input artifact: its kind (the name of the step that builds it) and how a run supplies it.

    `optional`: the step runs without it (evaluate without an adapter scores the base model). `labelled`: a run
    holds several of that kind (one selection per method@budget); a step picks one by its `label` parameter.
    `when`: for an optional input, a predicate on the step's parameters saying when it is needed. `loop`: the
    artifact of an earlier round of a multi-round step, built by a step that comes later in the pipeline.
    """

    kind: str
    name: str = ""  # the build's name for it (default: the kind)
    optional: bool = False
    labelled: bool = False
    when: Callable[[BaseModel | None], bool] | None = None
    hashed: bool = True  # False: its digest is not in the identity; the step's `identity` says what of it counts
    loop: bool = False  # an earlier round's artifact (kmq-iterative: the previous selection's fine-tune): no ordering

    @property
    def key(self) -> str:
        return self.name or self.kind


@dataclass(frozen=True)
class Step:
    """One step of the pipeline, declared once (see the module docstring)."""

    name: str  # the artifact kind it builds; the step's name in flows, the CLI, run records and lineage
    build: Callable[[Build], dict[str, Any]]  # writes the artifact's files into b.work; returns its summary
    doc: str  # one line: what the artifact holds (the deployment's and the CLI's description)
    inputs: tuple[Input, ...] = ()
    sections: tuple[str, ...] = ()  # the recipe sections `build` reads (and the identity hashes)
    ignore: dict[str, tuple[str, ...]] = field(default_factory=dict)  # section fields that do not change the result
    params: type[BaseModel] | None = None  # what a person chooses per call (select: method and budget)
    identity: Callable[..., dict[str, Any]] | None = None  # extra identity: identity(recipe, inputs, params)
    pool: Literal["cpu", "gpu"] = "cpu"  # the work pool (and Dask resources) it needs
    label: Callable[..., str | None] | None = None  # label(inputs, params): one of many artifacts of a run
    images: dict[str, str] = field(default_factory=dict)  # title -> file of the artifact shown in its UI card
    # "run": built once per pipeline run; "branch": once per method x budget branch, the branch's steps in pipeline
    # order (selection -> finetune -> evaluation); "call": only when called (the validate flow's probe and tune)
    per: Literal["run", "branch", "call"] = "run"
    # a multi-round step: rounds(params) rounds, round r called with params.round = r; from round 1 its `loop`
    # inputs are the previous round's artifacts (kmq-iterative: its selection and the fine-tune trained on it)
    rounds: Callable[[Any], int] | None = None
    run_if: Callable[[Any], bool] | None = None  # run_if(recipe): whether a pipeline run needs it (default: always)
    # describe(ref, table): figures for people derived from the artifact's files (evaluation: the per-task table),
    # added to the ref's summary whenever it is produced; outside the identity, so editing it recomputes nothing
    describe: Callable[..., dict[str, Any]] | None = None
    # report(ref): what the run report reads from this step's artifact (the pool's counts, the influence statistics
    # and plot, the fidelity); the pipeline merges every run step's into the report's facts. Outside the identity.
    report: Callable[..., dict[str, Any]] | None = None

    def __post_init__(self):
        unknown = set(self.sections) - set(SECTIONS)
        if unknown:
            raise ValueError(f"step {self.name!r}: unknown recipe sections {sorted(unknown)}; sections: {SECTIONS}")
        if self.rounds is not None and (self.params is None or "round" not in self.params.model_fields):
            raise ValueError(f"step {self.name!r} runs rounds: its params need a `round` field")

    def rounds_of(self, params: Any) -> int:
        """Returns how many rounds a call with these parameters runs (1: a single-pass step or call)."""
        return self.rounds(params) if self.rounds is not None and params is not None else 1

    def label_of(self, inputs: dict[str, Any], params: Any) -> str | None:
        """Returns the label of the artifact a call builds (its key in a run record): `label`, with " round r" on an
        earlier round of a multi-round call (the last round's artifact is the branch's)."""
        if self.label is None:
            return None
        base, rounds = self.label(inputs, params), self.rounds_of(params)
        r = getattr(params, "round", 0)
        return base if rounds == 1 or r == rounds - 1 else f"{base} round {r}"


class Progress(Protocol):
    def update(self, done: float, total: float, **info: Any) -> None: ...


class Build(Protocol):
    """What a step's `build` gets: its inputs, sections and parameters, a work folder, and reporting hooks."""

    recipe: Any  # the declared sections only: b.recipe.<section>
    inputs: dict[str, Any]  # Input.key -> ArtifactRef (None for an absent optional input)
    params: Any  # the step's params model, or None
    work: Path  # the resumable folder the artifact is built in
    run_root: Path  # shared caches beside the artifacts (evaluation's trunk states)
    execution: Any  # the recipe's execution section: threads, shards (never part of an identity)

    def progress(self, description: str, total: int | None = None) -> Progress: ...

    def log(self, message: str, warning: bool = False) -> None: ...

    def table(self, name: str, rows: list[dict], description: str) -> None: ...

    def map(self, fn: Callable[..., Any], calls: Iterable[tuple], name: Callable[..., str]) -> list[Any]: ...


class SectionError(AttributeError):
    pass


class Sections:
    """The recipe as a build sees it: the sections its step declared, and nothing else."""

    def __init__(self, step: str, recipe: Any, sections: Iterable[str]):
        self._step, self._names = step, tuple(sections)
        for name in self._names:
            object.__setattr__(self, name, getattr(recipe, name))

    def __getattr__(self, name: str) -> Any:  # only called for what __init__ did not set
        if name.startswith("__"):
            raise AttributeError(name)
        raise SectionError(
            f"step {self._step!r} reads recipe.{name} but does not declare it: add {name!r} to its Step(sections=...) "
            f"(declared: {', '.join(self._names) or 'none'})"
        )

    def __reduce__(self):  # picklable for Dask workers
        return (_rebuild_sections, (self._step, {n: getattr(self, n) for n in self._names}))


def _rebuild_sections(step: str, values: dict[str, Any]) -> Sections:
    out = Sections.__new__(Sections)
    out._step, out._names = step, tuple(values)
    for k, v in values.items():
        object.__setattr__(out, k, v)
    return out


def executor() -> dict:
    """Returns who is computing here: host, pid and the Dask worker's name (None in the driver)."""
    import os
    import socket

    try:
        from distributed import get_worker

        worker = str(get_worker().name)
    except (ImportError, ValueError):  # not on a Dask worker
        worker = None
    return {"host": socket.gethostname(), "pid": os.getpid(), "worker": worker}


def chunks_by_executor(builders: list[dict]) -> dict[str, int]:
    """Returns {"driver" or "worker <name> (<host>)": chunks computed} from the per-chunk records."""
    out: dict[str, int] = {}
    for b in builders:
        who = "driver" if b.get("worker") is None else f"worker {b['worker']} ({b['host']})"
        out[who] = out.get(who, 0) + 1
    return dict(sorted(out.items()))
