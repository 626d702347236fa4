"""What a command shows in the terminal while it works: one live display, or plain lines.

In a terminal (`bidsflow run`, `step`, `validate` with stdout a TTY), every
progress bar of the run (the steps' own, and those of the libraries they
call: lm-evaluation-harness, transformers) is a line of one rich live
display at the bottom, and Prefect's log lines scroll above it. Without a
terminal (CI logs, `> file`), no bar is drawn: the steps' progress is the
plain log line each writes every ~10% (flows.ui.Progress), so a log holds
lines, never carriage returns or cursor escapes.

Bars are tqdm's everywhere in the code (bidsml and the libraries); while the
display is up, tqdm draws into it instead of onto stderr. Nothing here
changes what a step computes.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text


class _Sink:
    """Where a bar's own drawing goes while the display draws it: nowhere."""

    def write(self, s: str) -> int:
        return len(s)

    def flush(self) -> None:
        pass


def _tqdm_class():
    from tqdm import std

    return std.tqdm  # every tqdm (tqdm.auto, tqdm.asyncio) is this class or a subclass


@contextlib.contextmanager
def tqdm_as_tasks(progress: Progress) -> Iterator[None]:
    """Draws every tqdm bar made inside as a task of `progress` (removed when the bar closes)."""
    cls = _tqdm_class()
    init, display, close = cls.__init__, cls.display, cls.close

    def new_init(self, *args, **kwargs):
        kwargs["file"] = _Sink()
        init(self, *args, **kwargs)

    def new_display(self, msg=None, pos=None):
        if self.disable:
            return
        task = self.__dict__.get("_live_task")
        what = (self.desc or "").rstrip(": ") or "working"
        if task is None:
            task = self._live_task = progress.add_task(what, total=self.total)
        progress.update(task, completed=self.n, total=self.total, description=what)

    def new_close(self):
        close(self)
        task = self.__dict__.pop("_live_task", None)
        if task is not None:
            progress.remove_task(task)

    cls.__init__, cls.display, cls.close = new_init, new_display, new_close
    try:
        yield
    finally:
        cls.__init__, cls.display, cls.close = init, display, close


@contextlib.contextmanager
def tqdm_silenced() -> Iterator[None]:
    """Makes every tqdm bar made inside draw nothing (a log file gets the steps' plain progress lines instead)."""
    cls = _tqdm_class()
    init = cls.__init__

    def new_init(self, *args, **kwargs):
        kwargs["disable"] = True
        init(self, *args, **kwargs)

    cls.__init__ = new_init
    try:
        yield
    finally:
        cls.__init__ = init


class _Above:
    """Stands in for a Prefect console handler's console: prints each log line above the live display, as plain
    text (a log message is never read as rich markup)."""

    def __init__(self, console: Console):
        self.console = console

    def print(self, message, **kwargs) -> None:
        self.console.print(Text(message) if isinstance(message, str) else message, **kwargs)


def _console_handlers() -> list[logging.Handler]:
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger()] + [
        logger for logger in logging.root.manager.loggerDict.values() if isinstance(logger, logging.Logger)
    ]
    return [h for logger in loggers for h in logger.handlers if isinstance(h, PrefectConsoleHandler)]


@contextlib.contextmanager
def logs_above(console: Console) -> Iterator[None]:
    """Sends Prefect's console log lines through `console`: with a live display up, they scroll above it."""
    handlers = _console_handlers()
    saved = [(h, h.console) for h in handlers]
    for h in handlers:
        h.console = _Above(console)
    try:
        yield
    finally:
        for h, old in saved:
            h.console = old


def new_progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


@contextlib.contextmanager
def live_display(terminal: bool | None = None, console: Console | None = None) -> Iterator[Progress | None]:
    """Shows the run's progress: a live display with the log lines above it when `terminal` (default: stdout is a
    TTY), else plain lines only; yields the display (None without one)."""
    terminal = sys.stdout.isatty() if terminal is None else terminal
    if not terminal:
        with tqdm_silenced():
            yield None
        return
    progress = new_progress(console or Console())
    with progress, logs_above(progress.console), tqdm_as_tasks(progress):
        yield progress
