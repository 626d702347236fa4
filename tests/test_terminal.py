"""What a person watching `bidsflow run` sees: one live display with the log lines above it in a terminal, and plain
lines (no carriage returns, no cursor escapes) in a log file."""

import io
import logging

from prefect.logging.handlers import PrefectConsoleHandler
from rich.console import Console
from tqdm.auto import tqdm

from flows.terminal import live_display


def _prefect_logger(stream: io.StringIO) -> logging.Logger:
    log = logging.getLogger("bidsflow-test-terminal")
    log.handlers[:] = [PrefectConsoleHandler(stream=stream)]
    log.propagate, log.level = False, logging.INFO
    return log


def test_in_a_terminal_bars_are_one_display_and_log_lines_scroll_above_it(capsys):
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100)
    own_stream = io.StringIO()
    log = _prefect_logger(own_stream)
    with live_display(terminal=True, console=console) as progress:
        bar = tqdm(total=40, desc="features chunk", mininterval=0)
        for i in range(40):
            bar.update(1)
            if i == 20:
                (task,) = progress.tasks  # the library's bar is a task of the one display
                assert task.description == "features chunk" and task.completed == 21 and task.total == 40
                log.info("features: 21/40 [a, b] (52%)")  # brackets are text, not markup
        bar.close()
        assert not progress.tasks  # a closed bar leaves the display
    shown = screen.getvalue()
    assert "features: 21/40 [a, b] (52%)" in shown and own_stream.getvalue() == ""
    assert "%|" not in capsys.readouterr().err  # tqdm drew nothing of its own
    # afterwards, both are as they were: the handler prints to its stream, tqdm draws its bar
    log.info("after")
    assert "after" in own_stream.getvalue()
    out = io.StringIO()
    tqdm(range(3), file=out, mininterval=0).close()
    assert "3/3" in out.getvalue() or "0/3" in out.getvalue()


def test_without_a_terminal_no_bar_is_drawn_and_progress_is_plain_log_lines(caplog):
    from flows.ui import Progress

    log_file = io.StringIO()
    log = _prefect_logger(log_file)
    with live_display(terminal=False) as progress, caplog.at_level(logging.INFO, logger="bidsflow"):
        assert progress is None
        drawn = io.StringIO()
        for _ in tqdm(range(5), file=drawn, mininterval=0):
            pass
        assert drawn.getvalue() == ""  # no bar, no carriage return
        p = Progress("test-progress", "training")
        for done in range(11):
            p.update(done, 10, loss=2.5)
        log.info("a log line")
    lines = [r.getMessage() for r in caplog.records if r.name == "bidsflow"]
    assert "training: 5/10 (50%), loss 2.5" in lines and "training: 10/10 (100%), loss 2.5" in lines
    assert log_file.getvalue().strip().endswith("a log line")
    assert "\r" not in log_file.getvalue() and "\x1b[" not in log_file.getvalue()


SNIPPET = """
import logging, time
from prefect.logging.handlers import PrefectConsoleHandler
from tqdm.auto import tqdm
from flows.terminal import live_display
log = logging.getLogger("demo")
log.handlers[:] = [PrefectConsoleHandler()]
log.setLevel(logging.INFO)
log.propagate = False
with live_display():
    bar = tqdm(total=20, desc="training steps")
    for i in range(20):
        bar.update(1)
        time.sleep(0.02)
        if i == 10:
            log.info("halfway [a]")
    bar.close()
print("done")
"""


def test_on_a_real_terminal_the_bar_redraws_in_place_under_the_log_lines():
    """The command's own stdout a pseudo-terminal, as a person's shell gives it: the default choice."""
    import os
    import pty
    import subprocess
    import sys
    from pathlib import Path

    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "100", "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", SNIPPET], stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=60) == 0
    screen = b"".join(chunks).decode(errors="replace")
    assert screen.count("\r\x1b[2K") >= 3  # the bar redrawn in place (carriage return, erase line), not appended
    import re

    shown = [int(n) for n in re.findall(r"(\d+)/20", screen)]
    assert screen.count("halfway [a]") == 1 and max(shown) >= 15 and shown == sorted(shown)  # one bar, advancing
    assert screen.index("halfway [a]") < screen.rindex("training steps")  # the log line above the bar
    assert "it/s" not in screen  # tqdm drew nothing of its own
    assert screen.rstrip().endswith("done")
