"""Every way a session's process can end leaves nothing behind.

Each test runs a real session in a subprocess (tests/support/drivers/lifetime_driver.py)
whose two workers run process trees: a pipeline, a Python child with a child
of its own, and a ``setsid`` grandchild. Then the session ends by normal
exit, uncaught exception, SIGINT to its process group (as Ctrl-C in a
terminal), SIGTERM or SIGKILL. Within 10 s no process of that session may be
left (its Ray head, actors, guards, programs and their children), and its
temp dir is gone.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from tests.support.lifetime import GONE_WITHIN_S, Driver, app_ports, claimed
from tests.support.processes import marked_processes, wait_no_marked_processes

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leaks")]


@pytest.fixture
def kill_leftovers() -> Iterator[list[Driver]]:
    drivers: list[Driver] = []
    yield drivers
    for driver in drivers:
        for proc in marked_processes(driver.mark):
            proc.kill()


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
    assert any("cmlray._homeagent" in c for c in commands)  # its node's agent, its own child
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
