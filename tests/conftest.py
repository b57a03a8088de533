"""Shared fixtures: one cmlray session per test module, and a leak check.

Every process this test run starts (Ray's head, actors, guards, workers'
programs and their children) inherits ``CMLRAY_TEST_RUN`` in its
environment. After each module's session has ended, no such process may be
left: the check waits for them to go (up to ``LEAK_WAIT_S``) and fails the
module's last test otherwise, naming what was left.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import psutil
import pytest
from rich.console import Console

import cmlray

if TYPE_CHECKING:
    from tests.netcluster import NamespaceCluster

RUN_MARK = "CMLRAY_TEST_RUN"
# One mark per test process (each pytest-xdist worker has its own), so a
# module's leak check sees only the processes its own process started.
os.environ[RUN_MARK] = uuid.uuid4().hex
LEAK_WAIT_S = 15.0


def marked_processes(mark: str | None = None) -> list[psutil.Process]:
    """Live processes (not this one) that inherited this run's mark."""
    needle = f"{RUN_MARK}={mark or os.environ[RUN_MARK]}".encode()
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            with open(f"/proc/{proc.pid}/environ", "rb") as f:
                if needle in f.read().split(b"\0") and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
        except (OSError, psutil.Error):
            continue
    return found


def marked_commands(mark: str | None = None) -> list[str]:
    """The command lines of the live marked processes (those ending meanwhile left out)."""
    commands = []
    for proc in marked_processes(mark):
        try:
            commands.append(" ".join(proc.cmdline()))
        except psutil.Error:
            continue
    return commands


def marked_environment_values(name: str, mark: str | None = None) -> set[str]:
    """The values of variable ``name`` in the live marked processes' environments."""
    prefix = f"{name}=".encode()
    values = set()
    for proc in marked_processes(mark):
        try:
            with open(f"/proc/{proc.pid}/environ", "rb") as f:
                entries = f.read().split(b"\0")
        except OSError:
            continue
        values |= {e[len(prefix) :].decode() for e in entries if e.startswith(prefix)}
    return values


def wait_no_marked_processes(timeout_s: float = LEAK_WAIT_S, mark: str | None = None) -> list[str]:
    """Wait until no marked process is left; returns descriptions of those still there."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = marked_processes(mark)
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    described = []
    for proc in left:
        try:
            described.append(f"{proc.pid} {' '.join(proc.cmdline())[:150]}")
        except psutil.Error:
            continue
    return described


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C interrupts again, in this process and what it starts, if it came in ignored.

    A suite started in the background of a script (``nohup pytest &``) inherits
    SIGINT ignored, and so would every program it starts; the tests of what
    Ctrl-C does (CLI, watch, a session's lifetime) need its default back.
    """
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    if ignored and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """With ``CMLRAY_SHUFFLE_SEED`` set: modules in a random order, tests too within each.

    benchmarks/stress.py uses it to find tests that depend on what ran before.
    Modules stay whole, so each still starts its session once.
    """
    seed = os.environ.get("CMLRAY_SHUFFLE_SEED")
    if not seed:
        return
    rng = random.Random(int(seed))
    modules: dict[str, list[pytest.Item]] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::", 1)[0], []).append(item)
    order = list(modules.values())
    rng.shuffle(order)
    for group in order:
        rng.shuffle(group)
    items[:] = [item for group in order for item in group]


@pytest.fixture(scope="module")
def no_leaks() -> Iterator[None]:
    """Fails the module if any process it started is still alive after it."""
    yield
    left = wait_no_marked_processes()
    for line in left:  # don't leave them for the next module either
        pid = int(line.split()[0])
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()
    assert not left, "processes left behind:\n" + "\n".join(left)


class Captured:
    """The session's console output, captured in memory."""

    def __init__(self) -> None:
        self.file = io.StringIO()
        self.console = Console(file=self.file, force_terminal=False, width=200)

    def text(self) -> str:
        return self.file.getvalue()


@pytest.fixture(scope="module")
def captured() -> Captured:
    return Captured()


@pytest.fixture(scope="module")
def session(
    no_leaks: None, captured: Captured, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A cmlray session with its own head (4 CPUs); yields its project dir."""
    project = tmp_path_factory.mktemp("project")
    logs = tmp_path_factory.mktemp("logs")
    cmlray.init(num_cpus=4, project_dir=str(project), console=captured.console, log_dir=logs)
    try:
        yield str(project)
    finally:
        cmlray.shutdown()


@pytest.fixture(scope="module")
def netcluster() -> Iterator[NamespaceCluster]:
    """A Ray cluster of three hosts made of namespaces (see tests/netcluster.py)."""
    from tests.netcluster import cluster_fixture

    with cluster_fixture() as cluster:
        yield cluster
