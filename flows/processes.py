"""The processes `bidsflow` starts, and how it stops them: nothing it started outlives it.

- `child_server(cmd)`: starts a long-running child (the Prefect server of
  `bidsflow ui`) in its own process group and, while the block runs,
  forwards SIGTERM and SIGINT to that group; when the block ends every
  process left in the group is terminated (SIGKILL after a grace period).
- `graceful_sigterm()`: turns SIGTERM into KeyboardInterrupt in the main
  thread, so `bidsflow run` / `step` / `serve` unwind the way Ctrl-C does:
  Dask LocalClusters close in their `with` blocks, Prefect's temporary
  server stops in its atexit hook, `serve`'s runner stops its flow runs.
  Without it Python dies on SIGTERM without running any of that.
- `watch_stop_signals()` / `raise_if_stopping()`: a step running in a
  worker thread (a fine-tune, an evaluation, a feature shard) stops at its
  next progress point once SIGTERM or SIGINT arrived. Unwinding the main
  thread alone is not enough: Prefect's task runner waits for every running
  thread before the flow ends, so a signal took effect only when the
  in-flight branches finished (219 s on tiny.yaml with a 300-epoch fine-tune).
- `port_in_use(host, port)`: None when the port is free, else a sentence
  saying so and, when it can tell, which process listens there.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator

GRACE_S = 10.0  # how long a forwarded SIGTERM/SIGINT may take before the group is killed


def _signal_group(pgid: int, sig: int) -> bool:
    """Sends `sig` to process group `pgid`; returns False when the group is gone."""
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _group_alive(pgid: int) -> bool:
    return _signal_group(pgid, 0)


def stop_group(pgid: int, grace: float = GRACE_S) -> None:
    """Terminates every process of group `pgid`: SIGTERM, then SIGKILL for what is left after `grace` seconds."""
    import time

    if not _signal_group(pgid, signal.SIGTERM):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _group_alive(pgid):
        time.sleep(0.1)
    _signal_group(pgid, signal.SIGKILL)


@contextlib.contextmanager
def child_server(cmd: list[str], env: dict, grace: float = GRACE_S) -> Iterator[subprocess.Popen]:
    """Starts `cmd` in a new process group; SIGTERM/SIGINT to this process go to the group; stops it on exit.

    A forwarded signal that the group has not obeyed after `grace` seconds is
    followed by SIGKILL (a timer thread: the main thread may be blocked in `wait`).
    """
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    pgid = proc.pid
    handled = (signal.SIGTERM, signal.SIGINT)
    previous = {s: signal.getsignal(s) for s in handled}

    def forward(signum, _frame):
        _signal_group(pgid, signum)
        timer = threading.Timer(grace, _signal_group, (pgid, signal.SIGKILL))
        timer.daemon = True
        timer.start()

    for s in handled:
        signal.signal(s, forward)
    try:
        yield proc
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        stop_group(pgid, grace)  # whatever is left of the group, the leader included if it still runs
        proc.wait()


def exit_status(returncode: int) -> int:
    """Returns a shell exit status for a child's return code (a signal N gives 128 + N, as shells do)."""
    return 128 - returncode if returncode < 0 else returncode


def graceful_sigterm() -> None:
    """Makes SIGTERM raise KeyboardInterrupt in the main thread (cleanup runs as on Ctrl-C)."""
    if threading.current_thread() is not threading.main_thread():
        return

    def interrupt(_signum, _frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, interrupt)


# Set once bidsflow was asked to stop (SIGTERM, SIGINT): worker threads raise `Interrupted` at their next progress point
STOP = threading.Event()
_WAKEUP: list[socket.socket] = []


class Interrupted(KeyboardInterrupt):
    """Raised in a step at its next progress point after SIGTERM or SIGINT; what it finished stays cached."""


def watch_stop_signals() -> None:
    """Sets `STOP` the moment SIGTERM or SIGINT arrives, whichever Python handler is then installed.

    Prefect replaces the SIGTERM handler while a flow runs, and its handler
    raises in the main thread only. The signal module's wakeup fd is written
    by the interpreter for every handled signal, whoever handles it: a daemon
    thread reads it and sets the event. Bytes for a wakeup fd installed
    before this one are passed on to it.
    """
    if threading.current_thread() is not threading.main_thread() or _WAKEUP:  # once per process
        return
    read, write = socket.socketpair()
    write.setblocking(False)
    try:
        previous = signal.set_wakeup_fd(write.fileno(), warn_on_full_buffer=False)
    except ValueError:  # not the main thread of the main interpreter
        read.close(), write.close()
        return
    stops = {signal.SIGTERM, signal.SIGINT}
    _WAKEUP[:] = [read, write]  # the interpreter writes to this fd number: the sockets must outlive this call

    def watch() -> None:
        while True:
            data = read.recv(64)
            if not data:
                return
            if any(b in stops for b in data):
                STOP.set()
            if previous != -1:
                with contextlib.suppress(OSError):
                    os.write(previous, data)

    threading.Thread(target=watch, name="bidsflow stop-signal watcher", daemon=True).start()


def raise_if_stopping() -> None:
    """Raises `Interrupted` when bidsflow was asked to stop (called at every progress point of a step)."""
    if STOP.is_set():
        raise Interrupted("bidsflow was asked to stop: this step stops here; a rerun resumes from what is cached")


def _listener(port: int) -> str | None:
    """Returns 'pid N (command line)' of the process listening on `port`, when this user may see it."""
    try:
        import psutil

        for conn in psutil.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                p = psutil.Process(conn.pid)
                return f"pid {conn.pid} ({' '.join(p.cmdline())[:200]})"
    except Exception:  # no permission, a process that just ended, no psutil: say less
        return None
    return None


def port_in_use(host: str, port: int) -> str | None:
    """Returns None when `host:port` can be bound, else a sentence that names the port and what holds it."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is not "in use"
        try:
            s.bind((host, port))
            return None
        except OSError as err:
            why = err.strerror or str(err)
    holder = _listener(port)
    held = f"; it is held by {holder}" if holder else ""
    return f"port {port} on {host} is not available ({why}){held}. Stop that process or choose another --port."
