"""The own head's agent as a process of the session (``cmlray/_homeagent.py``): its end.

Real processes stand in for the agent: what the session reads from a
process's end (its signal, its exit code and last line), how it waits for
that end, and that ``kill`` ends the whole process group, as the agent's
fork server and zygotes are in it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from cmlray import _homeagent
from cmlray._homeagent import HomeProcess
from cmlray._rayerrors import Kind


def _process(tmp_path: Path, code: str) -> HomeProcess:
    log_path = tmp_path / "agent.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
    return HomeProcess(proc, str(tmp_path), str(log_path))


def test_an_agent_that_fails_is_told_by_its_exit_code_and_last_line(tmp_path: Path) -> None:
    home = _process(tmp_path, "import sys; print('loading'); sys.exit('ValueError: boom')")
    death = home.death()
    assert death.kind is Kind.AGENT_FAILED
    assert death.words == "its node's agent failed (exit code 1): ValueError: boom"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_an_agent_killed_is_told_by_its_signal(tmp_path: Path, signum: signal.Signals) -> None:
    home = _process(tmp_path, "import time; time.sleep(60)")
    os.kill(home.pid, signum)
    asyncio.run(asyncio.wait_for(_homeagent.exited(home), 30))  # woken by its end
    death = home.death()
    assert death.kind is Kind.AGENT_DIED
    assert death.words == f"its node's agent died ({signum.name})"


def test_end_asks_with_sigterm_once(tmp_path: Path) -> None:
    home = _process(tmp_path, "import time; time.sleep(60)")
    home.end()
    assert home.proc.returncode == -signal.SIGTERM
    home.end()  # again: nothing (its group's id may be another's by now)
    assert home.killed


def test_an_agent_that_does_not_end_has_its_group_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_homeagent, "TERM_WAIT_S", 0.2)
    # Deaf to SIGTERM, with a child in its group, as the agent's fork server is.
    code = (
        "import signal, subprocess, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "subprocess.Popen(['sleep', '60']); print('up', flush=True); time.sleep(60)"
    )
    home = _process(tmp_path, code)
    children: list[psutil.Process] = []
    for _ in range(500):
        children = psutil.Process(home.pid).children()
        if children and "up" in (tmp_path / "agent.log").read_text():
            break
        asyncio.run(asyncio.sleep(0.01))
    (child,) = children
    home.end()
    assert home.proc.returncode == -signal.SIGKILL
    child.wait(timeout=30)  # raises TimeoutExpired if it were left
