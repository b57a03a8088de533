"""The ``cmlray`` command, run as a user runs it: a real process, real workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

import pytest

from tests.support.processes import RUN_MARK, wait_no_marked_processes

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leaks")]
CMLRAY = [sys.executable, "-m", "cmlray", "launch", "--cpu", "0.5", "--memory", "0.2"]


def _run(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CMLRAY, *args], capture_output=True, text=True, timeout=timeout_s)


def test_success_streams_output_and_exits_0() -> None:
    done = _run("-n", "2", "--code", "import os; print('hi from', os.environ['CDSW_ENGINE_ID'])")
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if "] hi from " in line]
    assert sorted(line.split("]")[0] for line in lines) == ["[worker-1", "[worker-2"]
    assert done.stdout.count("succeeded") == 2


def test_a_failed_worker_makes_it_exit_1() -> None:
    done = _run("-n", "1", "--", "sh", "-c", 'echo $0 "$1"; exit 4', "a", "b c")
    assert done.returncode == 1
    assert "[worker-1] a b c" in done.stdout
    assert "exit code 4" in done.stdout


def test_ctrl_c_stops_every_worker_and_exits_130() -> None:
    mark = uuid.uuid4().hex
    proc = subprocess.Popen(
        [*CMLRAY, "-n", "2", "--", "sh", "-c", "echo up; sleep 300"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=dict(os.environ, **{RUN_MARK: mark}),
    )
    assert proc.stdout is not None
    seen = 0
    for line in proc.stdout:
        seen += line.endswith("] up\n")
        if seen == 2:
            break
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted: stopping every worker" in out
    assert out.count("stopped") >= 2
    assert not wait_no_marked_processes(mark=mark)
