"""Run untrusted generated code: one process group per program, in a fresh temporary directory.

Each program runs under `python -I` in its own session (process group) with:
- a wall-clock timeout; the whole group is SIGKILLed when the program ends,
  so forked children die with it;
- resource limits: CPU seconds, address space (memory), file size, open
  files, processes;
- an empty environment (no inherited secrets, no proxies), and other
  processes' /proc entries (their environments) unreadable;
- Python audit hooks installed before the program runs, which refuse
  sockets, new processes (fork, exec, spawn, subprocess, os.system), ctypes,
  and any write, rename or delete outside its directory (the OS does not let
  an unprivileged process do this otherwise; root ignores some rlimits, the
  hooks do not).
A program passes only if it exits 0 within its limits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

# Runs inside the sandboxed interpreter before the program; argv: limits, then the program path.
_GUARD = r"""
import os, resource, sys
cpu, mem, fsize = (int(x) for x in sys.argv[1:4])
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
try:
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
except (ValueError, OSError):
    pass
HOME = os.path.realpath(os.getcwd())
BLOCKED = ("socket.", "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
           "os.forkpty", "pty.spawn", "ctypes.", "os.kill", "os.killpg", "signal.pthread_kill", "winreg.")
WRITES = {"os.remove", "os.rmdir", "os.rename", "os.mkdir", "os.chmod", "os.chown", "os.link", "os.symlink",
          "os.truncate", "os.utime", "shutil.rmtree", "shutil.move", "shutil.copyfile", "os.replace"}

def inside(path):
    try:
        p = os.path.realpath(os.fsdecode(path) if not isinstance(path, int) else HOME)
    except Exception:
        return False
    return p == HOME or p.startswith(HOME + os.sep)

OWN_PROC = f"/proc/{os.getpid()}"

def guard(event, args):
    if event.startswith(BLOCKED):
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "open" and args and isinstance(args[0], (str, bytes)):
        p = os.fsdecode(args[0])
        if p.startswith("/proc/") and p.split("/")[2].isdigit() and not p.startswith(OWN_PROC + "/"):
            raise PermissionError("sandbox: other processes' /proc entries are not readable")
    if event == "open" and args and args[1] is not None and any(c in str(args[1]) for c in "wax+"):
        if not inside(args[0]):
            raise PermissionError(f"sandbox: writing {args[0]!r} outside the sandbox directory")
    if event == "open" and args and len(args) > 2 and isinstance(args[2], int) and args[2] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
        if not inside(args[0]):
            raise PermissionError(f"sandbox: writing {args[0]!r} outside the sandbox directory")
    if event in WRITES and args and not all(inside(a) for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))):
        raise PermissionError(f"sandbox: {event} outside the sandbox directory")

sys.dont_write_bytecode = True
sys.addaudithook(guard)
path = sys.argv[4]
sys.argv = [path]
import runpy
runpy.run_path(path, run_name="__main__")
"""


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 1024
    file_mb: int = 16


@dataclass(frozen=True)
class Outcome:
    passed: bool
    status: str  # "passed" | "failed" | "timeout"
    returncode: int | None
    stderr_tail: str


def run_program(code: str, limits: Limits = Limits()) -> Outcome:
    """Runs `code` in a fresh temporary directory under the sandbox; returns whether it exited 0 in time."""
    with tempfile.TemporaryDirectory(prefix="bids-sandbox-") as tmp:
        prog = Path(tmp) / "program.py"
        prog.write_text(code)
        args = [
            sys.executable,
            "-I",
            "-c",
            _GUARD,
            str(limits.cpu_s),
            str(limits.memory_mb * 2**20),
            str(limits.file_mb * 2**20),
            str(prog),
        ]
        proc = subprocess.Popen(
            args,
            cwd=tmp,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": tmp, "TMPDIR": tmp},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        status = None
        try:
            _, err = proc.communicate(timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            status = "timeout"
            _kill_group(proc.pid)
            _, err = proc.communicate()
        finally:
            _kill_group(proc.pid)  # children the program left behind
        rc = proc.returncode
        if status is None:
            status = "passed" if rc == 0 else "failed"
        return Outcome(status == "passed", status, rc, err.decode(errors="replace")[-2000:])


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_programs(codes: list[str], limits: Limits = Limits(), workers: int = 4) -> list[Outcome]:
    """Runs programs concurrently (each in its own sandbox); returns outcomes in order."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda c: run_program(c, limits), codes))
