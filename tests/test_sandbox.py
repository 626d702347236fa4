"""The code sandbox contains hostile programs, scores them failed, and keeps going."""

import os
import time

import psutil
import pytest

from bidsml.evaluation.sandbox import Limits, run_program, run_programs

FAST = Limits(timeout_s=5, cpu_s=3, memory_mb=512)


def test_correct_program_passes_and_failing_assert_fails():
    assert run_program("def f(x):\n    return x + 1\nassert f(1) == 2\n", FAST).passed
    bad = run_program("def f(x):\n    return x\nassert f(1) == 2\n", FAST)
    assert not bad.passed and bad.status == "failed" and "AssertionError" in bad.stderr_tail


def test_infinite_loop_times_out_and_is_killed():
    t = time.time()
    out = run_program("while True:\n    pass\n", Limits(timeout_s=2, cpu_s=30))
    assert out.status == "timeout" and not out.passed
    assert time.time() - t < 10
    # CPU limit alone also stops it (SIGXCPU) when the wall clock is generous
    out = run_program("while True:\n    pass\n", Limits(timeout_s=30, cpu_s=1))
    assert not out.passed and out.status == "failed"


def test_fork_loop_is_refused_and_leaves_no_processes():
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    out = run_program("import os\nwhile True:\n    os.fork()\n", FAST)
    assert not out.passed and "os.fork is not allowed" in out.stderr_tail
    out = run_program("import subprocess\nsubprocess.run(['sleep', '100'])\n", FAST)
    assert not out.passed and "not allowed" in out.stderr_tail
    assert {p.pid for p in me.children(recursive=True)} <= before


def test_huge_allocation_fails_with_memory_error():
    out = run_program("x = bytearray(8 * 1024**3)\n", FAST)
    assert not out.passed and "MemoryError" in out.stderr_tail


def test_writing_outside_its_directory_is_refused(tmp_path):
    target = tmp_path / "pwned.txt"
    out = run_program(f"open({str(target)!r}, 'w').write('x')\n", FAST)
    assert not out.passed and "outside the sandbox directory" in out.stderr_tail
    assert not target.exists()
    decoy = tmp_path / "keep.txt"  # never a file of the repository: a failed guard must cost nothing
    decoy.write_text("precious")
    out = run_program(f"import os\nos.remove({str(decoy)!r})\n", FAST)
    assert not out.passed and "outside the sandbox directory" in out.stderr_tail
    assert decoy.read_text() == "precious"
    # inside its own directory a program may write
    assert run_program("open('scratch.txt', 'w').write('ok')\nassert open('scratch.txt').read() == 'ok'\n", FAST).passed


def test_environment_secrets_are_not_visible(monkeypatch):
    monkeypatch.setenv("BIDS_TEST_SECRET", "hunter2")
    out = run_program("import os\nassert 'BIDS_TEST_SECRET' not in os.environ\n", FAST)
    assert out.passed  # the environment is empty
    out = run_program(f"print(open('/proc/{os.getpid()}/environ').read())\n", FAST)
    assert not out.passed and "hunter2" not in out.stderr_tail


def test_sockets_are_refused():
    out = run_program("import socket\ns = socket.socket()\ns.connect(('127.0.0.1', 9))\n", FAST)
    assert not out.passed and "socket" in out.stderr_tail


def test_harness_keeps_going_over_a_mix_of_programs():
    codes = ["assert 1 + 1 == 2\n", "while True: pass\n", "import os\nos.fork()\n", "raise SystemExit(0)\n"]
    outs = run_programs(codes, Limits(timeout_s=2, cpu_s=2, memory_mb=512), workers=2)
    assert [o.passed for o in outs] == [True, False, False, True]


@pytest.mark.parametrize("code", ["import ctypes\nctypes.CDLL(None).fork()\n"])
def test_ctypes_escape_is_refused(code):
    assert not run_program(code, FAST).passed
