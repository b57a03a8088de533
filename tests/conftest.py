"""Shared fixtures: one cmlray session per test module, and a leak check.

Every process this test run starts inherits a mark (``tests/support/processes.py``).
After each module's session has ended, no such process may be left: the
check waits for them to go (up to ``LEAK_WAIT_S``) and fails the module's
last test otherwise, naming what was left.

Tests under ``tests/unit/`` start no Ray: ``pytest tests/unit`` runs them in seconds.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import psutil
import pytest

import cmlray
from tests.support.console import Captured
from tests.support.processes import wait_no_marked_processes

if TYPE_CHECKING:
    from tests.clusters.netcluster import NamespaceCluster

UNIT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "unit")


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
    """Marks the tests of ``tests/unit/`` ``unit``; shuffles with ``CMLRAY_SHUFFLE_SEED``.

    With the seed set, modules run in a random order, tests too within each
    (tests/tools/stress.py uses it to find tests that depend on what ran
    before). Modules stay whole, so each still starts its session once.
    """
    for item in items:
        if str(item.path).startswith(UNIT_DIR + os.sep):
            item.add_marker(pytest.mark.unit)
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
    """A Ray cluster of three hosts made of namespaces (see tests/clusters/netcluster.py)."""
    from tests.clusters.netcluster import cluster_fixture

    with cluster_fixture() as cluster:
        yield cluster
