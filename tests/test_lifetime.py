"""Every way a session's process can end leaves nothing behind (SPEC: Session lifetime).

Each test runs a real session in a subprocess (tests/drivers/lifetime_driver.py)
whose two workers run process trees: a pipeline, a Python child with a child
of its own, and a ``setsid`` grandchild. Then the session ends by normal
exit, uncaught exception, SIGINT to its process group (as Ctrl-C in a
terminal), SIGTERM or SIGKILL. Within 10 s no process of that session may be
left (its Ray head, actors, guards, programs and their children), and its
temp dir is gone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cmlray import _ports
from tests.conftest import (
    RUN_MARK,
    marked_commands,
    marked_environment_values,
    marked_processes,
    wait_no_marked_processes,
)

DRIVER = Path(__file__).parent / "drivers" / "lifetime_driver.py"
GONE_WITHIN_S = 10.0
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leaks")]


class Driver:
    """A session process, its own mark, and what it reported once ready."""

    def __init__(self, mode: str, *extra: str) -> None:
        self.mark = uuid.uuid4().hex
        self.ports: set[int] = set()  # its workers' CDSW_APP_PORTs, once they run
        env = dict(os.environ, **{RUN_MARK: self.mark})
        self.proc = subprocess.Popen(
            [sys.executable, str(DRIVER), mode, *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
            text=True,
        )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # the workers' output comes first
            if line.startswith("{"):
                self.info = json.loads(line)
                return
        raise AssertionError(
            f"the driver died early: {self.proc.stderr.read() if self.proc.stderr else ''}"
        )

    def commands(self) -> list[str]:
        return marked_commands(self.mark)

    def wait_for_trees(self, timeout_s: float = 90) -> list[str]:
        """The commands of this session's processes, once both workers' trees are up.

        Each tree has 4 ``sleep 30x`` and a ``time.sleep(302)`` Python child;
        the last of them start a moment after the driver says it is ready.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            commands = self.commands()
            sleeps = sum(c.startswith("sleep 30") for c in commands)
            pythons = sum("time.sleep(302)" in c for c in commands)
            if (sleeps, pythons) == (8, 2) or time.monotonic() > deadline:
                return commands
            time.sleep(0.1)

    def finish(self, timeout_s: float = 60) -> tuple[int, str]:
        _, err = self.proc.communicate("go\n", timeout=timeout_s)
        return self.proc.returncode, err


@pytest.fixture
def kill_leftovers() -> Iterator[list[Driver]]:
    drivers: list[Driver] = []
    yield drivers
    for driver in drivers:
        for proc in marked_processes(driver.mark):
            proc.kill()


def app_ports(mark: str | None) -> set[int]:
    """The CDSW_APP_PORTs of a session's running programs (read from their environment)."""
    return {int(port) for port in marked_environment_values("CDSW_APP_PORT", mark)}


def claimed(ports: set[int]) -> list[int]:
    """Those of ``ports`` still claimed on this machine (a claim file left behind)."""
    directory = _ports._claims_path()
    return sorted(port for port in ports if os.path.exists(os.path.join(directory, str(port))))


def _assert_nothing_left(driver: Driver) -> None:
    left = wait_no_marked_processes(GONE_WITHIN_S, driver.mark)
    assert not left, "left behind:\n" + "\n".join(left)
    assert driver.info["temp_dir"] is None or not os.path.exists(driver.info["temp_dir"])
    assert not claimed(driver.ports)


def _start(mode: str, drivers: list[Driver]) -> Driver:
    driver = Driver(mode)
    drivers.append(driver)
    commands = driver.wait_for_trees()
    assert sum(c.startswith("sleep 30") for c in commands) == 8, commands  # 4 a worker
    assert sum("time.sleep(302)" in c for c in commands) == 2, commands
    assert any("raylet" in c for c in commands)
    driver.ports = app_ports(driver.mark)
    assert len(driver.ports) == 2 and claimed(driver.ports) == sorted(driver.ports)
    return driver


def test_normal_exit(kill_leftovers: list[Driver]) -> None:
    driver = _start("exit", kill_leftovers)
    code, err = driver.finish()
    assert code == 0, err
    _assert_nothing_left(driver)


def test_uncaught_exception(kill_leftovers: list[Driver]) -> None:
    driver = _start("exception", kill_leftovers)
    code, err = driver.finish()
    assert code == 1 and "the session's script crashed" in err
    _assert_nothing_left(driver)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_signal(signum: signal.Signals, kill_leftovers: list[Driver]) -> None:
    driver = _start("wait", kill_leftovers)
    if signum == signal.SIGINT:  # Ctrl-C: the terminal signals the whole foreground group
        os.killpg(driver.proc.pid, signum)
    else:
        os.kill(driver.proc.pid, signum)
    code, _ = driver.finish()
    assert code != 0
    _assert_nothing_left(driver)
