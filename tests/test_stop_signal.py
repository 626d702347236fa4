"""The stop event behind SIGTERM / Ctrl-C: set whichever Python handler is installed, raised at a progress point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parents[1]

PROGRAM = """
import os, signal, threading, time
from flows.processes import Interrupted, STOP, raise_if_stopping, watch_stop_signals

watch_stop_signals()
watch_stop_signals()  # a second call installs nothing more
signal.signal(signal.SIGTERM, lambda *a: None)  # another handler, as Prefect's during a flow run
raise_if_stopping()  # nothing asked to stop yet
caught = []

def step():  # a step in a worker thread, reporting progress
    try:
        for _ in range(200):
            time.sleep(0.01)
            raise_if_stopping()
    except Interrupted as e:
        caught.append(str(e))

t = threading.Thread(target=step)
t.start()
os.kill(os.getpid(), signal.SIGTERM)
t.join(5)
print(STOP.is_set(), threading.active_count(), caught[0] if caught else "not stopped")
"""


def test_a_signal_sets_the_stop_event_under_another_handler_and_a_worker_thread_raises_at_its_next_progress_point():
    out = subprocess.run([sys.executable, "-c", PROGRAM], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    stop, threads, message = out.stdout.strip().split(" ", 2)
    assert stop == "True"
    assert threads == "2"  # the main thread and one watcher
    assert message.startswith("bidsflow was asked to stop") and "resumes" in message
