"""The home agent's events reach the session on its socket, and through Ray without one.

``cmlray/_eventsocket.py``: the agent on the session's own node writes its
batches on a local socket. With an own head that agent is a process of the
session (``cmlray/_homeagent.py``). Where the socket cannot be made, the
agent is a Ray actor and everything goes through Ray as for any other
node's agent; its death is then Ray's to tell.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import psutil
import pytest

import cmlray
from cmlray import _agentpool, _lifecycle
from tests.support.console import Captured
from tests.support.deadagent import kill_its_agent

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
    assert agent.process is not None and agent.handle is None  # a process of the session
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


@pytest.mark.parametrize(
    ("how", "reason"),
    [("ray.kill", "its node's agent was killed"), ("SIGKILL", "its node's agent died")],
)
def test_without_a_socket_a_dead_actor_agent_fails_its_workers_and_is_replaced(
    session_without_socket: None, how: str, reason: str
) -> None:
    import ray

    def kill(worker_id: str) -> None:
        handle = _home_agent().handle
        if how == "ray.kill":
            ray.kill(handle, no_restart=True)
        else:
            os.kill(int(ray.get(handle.ready.remote(), timeout=60)["pid"]), signal.SIGKILL)

    assert kill_its_agent(kill).startswith(reason)


def test_an_own_head_runs_its_workers_and_queues_without_a_ray_worker(own_session: None) -> None:
    queue = cmlray.Queue("doubled")
    queue.put_many(range(10))
    queue.close()
    code = "from cmlray.worker import serve\nserve('doubled', lambda x: 2 * x)"
    workers = cmlray.launch_workers(2, cpu=0.5, memory=0.25, code=code)
    assert sorted(r.result for r in queue.as_completed()) == [2 * i for i in range(10)]
    assert cmlray.await_workers(workers, timeout_seconds=60)["failures"] == []
    agent = _home_agent()
    assert agent.process is not None
    assert psutil.Process(agent.process.pid).ppid() == os.getpid()  # the session's own child
    argvs = [p.cmdline() for p in psutil.Process().children(recursive=True)]
    assert any("cmlray._homeagent" in argv for argv in argvs), argvs
    # No Ray worker process: none prestarted, and nothing asked Ray for one.
    ray_workers = [
        argv
        for argv in argvs
        if any(arg.endswith("default_worker.py") for arg in argv[1:3])  # (before its retitle)
        or (argv and argv[0].startswith(("ray::IDLE", "ray::NodeAgent")))
    ]
    assert not ray_workers, argvs
