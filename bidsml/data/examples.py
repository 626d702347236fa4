"""Example schema, loaders for user data, chat formatting and label masking.

Every example is ``{"id", "source", "messages": [{"role", "content"}, ...]}``
(open-instruct / Tulu format). Validation (target) examples also carry
``task``, optional ``subtask`` and ``capability``. Loss is over assistant
tokens only; every other label is -100.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bidsml.errors import DataError

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str


class Example(BaseModel):
    """One instruction example (pool) or validation/test example (targets)."""

    model_config = ConfigDict(extra="ignore")
    id: str = Field(..., min_length=1)
    source: str = Field(..., min_length=1)
    messages: list[Message] = Field(..., min_length=1)
    task: str | None = None
    subtask: str | None = None
    capability: str | None = None
    choices: list[str] | None = None  # multiple-choice test items: the options
    gold: int | None = None  # index of the correct option
    # optional pool metadata for the diversity/quality selectors (kmq, mig); absent on the built-in sources
    quality: float | None = None  # a quality score (e.g. a reward model's); higher is better
    labels: list[str] | None = None  # semantic tags (e.g. InsTag labels shipped with a dataset), for mig
    embedding: list[float] | None = None  # an embedding a user computed, for kmq/mig instead of the base model's
    planted_for: str | None = None  # a planted source's row: the target task it is in-distribution for


def check_example(raw: object, where: str) -> Example:
    """Returns the validated Example; raises DataError naming `where` and the field."""
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    try:
        ex = Example.model_validate(raw)
    except ValidationError as err:
        e = err.errors()[0]
        loc = ".".join(str(p) for p in e["loc"])
        raise DataError(f"{where}: field {loc!r}: {e['msg']}") from None
    for i, m in enumerate(ex.messages):
        if m.role not in ROLES:
            raise DataError(f"{where}: field 'messages.{i}.role': unknown role {m.role!r} (use {', '.join(ROLES)})")
    if not any(m.role == "assistant" and m.content.strip() for m in ex.messages):
        raise DataError(f"{where}: field 'messages': no non-empty assistant message to learn from")
    return ex


@dataclass
class LoadReport:
    """Counts in and out of a loader, and why records were rejected."""

    read: int = 0
    kept: int = 0
    rejected: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"read": self.read, "kept": self.kept, "rejected": len(self.rejected), "reasons": self.rejected[:20]}


def read_jsonl(path: str | Path, source: str | None = None, strict: bool = True) -> tuple[list[Example], LoadReport]:
    """Returns the examples of a JSONL file and a report of counts.

    With ``strict`` a malformed record raises DataError naming the file, line
    and field; otherwise it is skipped and listed in the report.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    report = LoadReport()
    out: list[Example] = []
    with path.open() as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            report.read += 1
            where = f"{path}:{lineno}"
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as err:
                msg = f"{where}: not valid JSON ({err.msg} at column {err.colno})"
                if strict:
                    raise DataError(msg) from None
                report.rejected.append(msg)
                continue
            if isinstance(raw, dict) and source and "source" not in raw:
                raw["source"] = source
            try:
                out.append(check_example(raw, where))
            except DataError as err:
                if strict:
                    raise
                report.rejected.append(str(err))
    report.kept = len(out)
    return out, report


def read_hf_disk(path: str | Path, source: str | None = None) -> tuple[list[Example], LoadReport]:
    """Returns the examples of a Hugging Face dataset saved with ``save_to_disk``."""
    import datasets

    path = Path(path)
    if not path.exists():
        raise DataError(f"dataset folder not found: {path}")
    ds = datasets.load_from_disk(str(path))
    report = LoadReport()
    out = []
    for i, row in enumerate(ds):
        report.read += 1
        if source and "source" not in row:
            row = {**row, "source": source}
        out.append(check_example(row, f"{path}[record {i}]"))
    report.kept = len(out)
    return out, report


def write_jsonl(examples: Iterable[Example | dict], path: str | Path) -> int:
    """Writes examples as JSONL in the input format; returns the count."""
    n = 0
    with Path(path).open("w") as fh:
        for ex in examples:
            d = ex.model_dump(exclude_none=True) if isinstance(ex, Example) else ex
            fh.write(json.dumps(d, ensure_ascii=False) + "\n")
            n += 1
    return n


# ---------------------------------------------------------------------------
# Formatting and masking


@dataclass
class Tokenized:
    """One example ready for the model: ids, labels (-100 off the assistant turns)."""

    id: str
    input_ids: list[int]
    labels: list[int]
    truncated: bool

    @property
    def n_label_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX)


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("the tokenizer has no chat template: set `model.chat_template` (a Jinja template or 'tulu')")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """Returns the rendered conversation and the character spans of assistant turns.

    A span runs from the end of the generation prompt before an assistant
    message to the end of that message as rendered (end-of-turn token included).
    """
    full = _render(tokenizer, messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = _render(tokenizer, messages[:i], add_generation_prompt=True)
        upto = _render(tokenizer, messages[: i + 1])
        if not full.startswith(upto) or not upto.startswith(prefix):
            raise DataError("chat template is not prefix-consistent; cannot locate assistant turns")
        spans.append((len(prefix), len(upto)))
    return full, spans


def tokenize_example(tokenizer, ex: Example, max_seq_length: int) -> Tokenized:
    """Returns ids and labels for `ex`, truncated from the right to `max_seq_length`.

    Raises DataError (naming the example id) when no assistant token is left.
    """
    messages = [m.model_dump() for m in ex.messages]
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    labels = [IGNORE_INDEX] * len(ids)
    for t, (a, b) in enumerate(enc["offset_mapping"]):
        if b > a and any(s <= a and b <= e for s, e in spans):
            labels[t] = ids[t]
    truncated = len(ids) > max_seq_length
    ids, labels = ids[:max_seq_length], labels[:max_seq_length]
    tok = Tokenized(ex.id, ids, labels, truncated)
    if tok.n_label_tokens == 0:
        why = "after truncation to max_seq_length" if truncated else "in the rendered conversation"
        raise DataError(f"example {ex.id!r}: no assistant token left {why} (max_seq_length={max_seq_length})")
    return tok


def chat_prompt(tokenizer, messages: list[dict]) -> str:
    """Returns the messages rendered with the chat template, ending with the assistant's generation prompt."""
    return _render(tokenizer, messages, add_generation_prompt=True)


def prompt_and_answer(tokenizer, ex: Example) -> tuple[str, str]:
    """Returns (prompt text up to the last assistant turn, that turn's content)."""
    messages = [m.model_dump() for m in ex.messages]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    prompt = _render(tokenizer, messages[:last], add_generation_prompt=True)
    return prompt, messages[last]["content"]


def tokenize_all(tokenizer, examples: list[Example], max_seq_length: int) -> tuple[list[Tokenized], dict]:
    """Returns tokenized examples and counts (truncated); raises on an empty label mask."""
    out = [tokenize_example(tokenizer, ex, max_seq_length) for ex in examples]
    return out, {"n": len(out), "truncated": sum(t.truncated for t in out)}


def iter_batches(
    items: list[Tokenized], max_tokens: int, max_batch: int = 64, max_padding: float = 0.2
) -> Iterator[list[int]]:
    """Yields index lists of length-sorted micro-batches of tokenized items (see `length_batches`)."""
    yield from length_batches([len(it.input_ids) for it in items], max_tokens, max_batch, max_padding)


def length_batches(
    lengths: list[int], max_tokens: int, max_batch: int = 64, max_padding: float = 0.2
) -> Iterator[list[int]]:
    """Yields index lists of length-sorted micro-batches under a padded token budget.

    A batch also ends when the next (longer) sequence would exceed its first by
    more than `max_padding`, so padding stays below ~20% of the tokens (on a
    CPU, padded tokens cost as much as real ones). Indices refer to `lengths`,
    so callers write results back in the original order.
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batch: list[int] = []
    shortest = longest = 0
    for i in order:
        n = lengths[i]
        if batch and (
            max(longest, n) * (len(batch) + 1) > max_tokens
            or len(batch) >= max_batch
            or n > (1 + max_padding) * shortest
        ):
            yield batch
            batch, longest = [], 0
        if not batch:
            shortest = n
        batch.append(i)
        longest = max(longest, n)
    if batch:
        yield batch


def collate(items: list[Tokenized], pad_id: int):
    """Returns right-padded (input_ids, attention_mask, labels) tensors."""
    import torch

    L = max(len(t.input_ids) for t in items)
    ids = torch.full((len(items), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), L), dtype=torch.long)
    labels = torch.full((len(items), L), IGNORE_INDEX, dtype=torch.long)
    for b, t in enumerate(items):
        n = len(t.input_ids)
        ids[b, :n] = torch.tensor(t.input_ids)
        mask[b, :n] = 1
        labels[b, :n] = torch.tensor(t.labels)
    return ids, mask, labels


def round_robin_sample(items: list, n: int, seed: int, key: Callable) -> list:
    """Returns up to n items taken round-robin over groups `key(item)` (seeded shuffles of groups and order)."""
    rng = random.Random(seed)
    groups: dict = {}
    for e in items:
        groups.setdefault(key(e), []).append(e)
    keys = sorted(groups)
    for k in keys:
        rng.shuffle(groups[k])
    rng.shuffle(keys)
    out: list = []
    depth = 0
    while len(out) < n and any(depth < len(groups[k]) for k in keys):
        for k in keys:
            if depth < len(groups[k]) and len(out) < n:
                out.append(groups[k][depth])
        depth += 1
    return out


def split_quarter(items: list[Example]) -> tuple[list[Example], list[Example]]:
    """Splits a set with no separate dev split: a seeded quarter for validation, the rest test."""
    order = list(range(len(items)))
    random.Random(1234).shuffle(order)
    cut = len(items) // 4
    return [items[i] for i in sorted(order[:cut])], [items[i] for i in sorted(order[cut:])]
