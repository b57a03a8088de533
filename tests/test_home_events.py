"""The home agent's events reach the session on its socket, and through Ray without one.

``cmlray/_eventsocket.py``: the agent on the session's own node writes its
batches on a local socket; its Ray stream carries none of them and still
tells when it ends. Where the socket cannot be made, everything goes
through Ray as for any other node's agent.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

import cmlray
from cmlray import _agentpool, _lifecycle
from tests.support.console import Captured

pytestmark = pytest.mark.usefixtures("no_leaks")

PRINTS = "import sys\nfor i in range(200): print('line', i)\nprint('to err', file=sys.stderr)"


def _session(captured: Captured) -> Iterator[None]:
    cmlray.init(num_cpus=2, console=captured.console)
    try:
        yield
    finally:
        cmlray.shutdown()


@pytest.fixture
def own_session(captured: Captured) -> Iterator[None]:
    yield from _session(captured)


@pytest.fixture
def session_without_socket(captured: Captured, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refused(*args: object, **kwargs: object) -> None:
        raise OSError("no socket here")

    monkeypatch.setattr(_agentpool._eventsocket.EventListener, "expect", refused)
    yield from _session(captured)


def _home_agent() -> _agentpool._Agent:
    pool = _lifecycle.require().agents
    assert pool._home_node is not None
    return pool._agents[pool._home_node]


def _run_printer() -> None:
    workers = cmlray.launch_workers(2, cpu=1, memory=0.25, code=PRINTS)
    result = cmlray.await_workers(workers, timeout_seconds=60)
    assert result["failures"] == []
    for worker in workers:
        assert cmlray.logs(worker, stream="out").splitlines() == [f"line {i}" for i in range(200)]
        assert cmlray.logs(worker, stream="err") == "to err\n"


def test_the_home_agent_streams_on_its_socket(own_session: None, captured: Captured) -> None:
    agent = _home_agent()
    assert agent.local is not None
    _run_printer()
    assert "[worker-1] line 199" in captured.text()
    # Placed, started, 201 lines and an exit each, none of them on Ray's stream.
    assert agent.ray_batches == 0
    # The agent is in: its socket's directory is gone (a killed session leaves none).
    assert not os.path.exists(os.path.dirname(agent.local[0]))


def test_without_a_socket_the_events_come_through_ray(
    session_without_socket: None, captured: Captured
) -> None:
    agent = _home_agent()
    assert agent.local is None
    _run_printer()
    assert "[worker-2] line 199" in captured.text()
    assert agent.ray_batches > 0
