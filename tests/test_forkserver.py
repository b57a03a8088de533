"""Guards forked by the bare fork server (``_forkserver``), driven without Ray.

A node agent enables the server; here the test process does, so the
supervisors run exactly as in an agent. The rest of the suite runs every
worker through it too (every worker's guard is forked in its agent). Python
programs here ask for a new interpreter, so that their guards come from
the bare server, not a zygote (tests/test_zygote.py).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from cmlray import _forkserver
from cmlray._launch import WorkerLaunch
from cmlray._supervisor import WorkerSupervisor
from cmlray._zygote import FRESH_ENV
from tests.support.supervise import (
    descendants_named,
    final,
    out_lines,
    supervise,
    supervise_many,
)
from tests.support.supervise import launch as supervise_launch

pytestmark = pytest.mark.usefixtures("no_leaks")


@pytest.fixture
def starter(monkeypatch: pytest.MonkeyPatch) -> Iterator[_forkserver.GuardStarter]:
    """This process's guards forked by a server of its own, ended after the test."""
    starter = _forkserver.GuardStarter()
    monkeypatch.setattr(_forkserver, "_starter", starter)
    monkeypatch.setattr(_forkserver, "_zygotes", {})
    yield starter
    _forkserver.close_all()


def launch(code: str, **extra: Any) -> WorkerLaunch:
    """A worker whose program is a new interpreter (its guard from the bare server)."""
    return supervise_launch(code, env={FRESH_ENV: "1"}, **extra)


def _server_pids() -> list[int]:
    return descendants_named(os.getpid(), "cmlray._forkserver")


def test_a_forked_guard_runs_the_program_with_its_fds_and_exit_code(
    starter: _forkserver.GuardStarter,
) -> None:
    code = (
        "import os, stat, sys\n"
        "fd = int(os.environ['CMLRAY_CHANNEL_FD'])\n"
        "print(stat.S_ISSOCK(os.fstat(fd).st_mode), os.environ['CDSW_IP_ADDRESS'])\n"
        "print('to stderr', file=sys.stderr)\n"
        "sys.exit(3)"
    )
    events = supervise(launch(code))
    assert (final(events)["status"], final(events)["exit_code"]) == ("failed", 3)
    assert out_lines(events) == ["True 127.0.0.1"]
    assert ("err", ["to stderr"]) in events
    assert len(_server_pids()) == 1  # the server stays for the next guard


def test_many_guards_from_one_server_each_get_their_own_fds(
    starter: _forkserver.GuardStarter,
) -> None:
    launches = [launch(f"print({i} * 7)", worker_id=f"{i:016d}") for i in range(8)]
    events = supervise_many(launches)
    assert {int(w): out_lines(e) for w, e in events.items()} == {i: [str(i * 7)] for i in range(8)}
    assert len(_server_pids()) == 1


def test_a_stop_ends_a_forked_guards_whole_tree(starter: _forkserver.GuardStarter) -> None:
    below: list[int] = []
    seen: list[tuple[str, object]] = []

    def printed(events: list[tuple[str, object]]) -> bool:
        seen[:] = events
        return any(kind == "out" for kind, _ in events)

    def stop(supervisor: WorkerSupervisor) -> None:
        started = next(p for k, p in seen if k == "started")
        assert isinstance(started, dict)
        guard = psutil.Process(started["pid"]).parent()
        assert guard is not None and "cmlray._forkserver" in " ".join(guard.cmdline())
        below.extend(p.pid for p in guard.children(recursive=True))
        supervisor.stop(2.0)

    events = supervise(
        launch("!setsid sleep 321 & sleep 322 & echo ready; wait", grace_period_s=2),
        when=printed,
        then=stop,
    )
    assert final(events)["status"] == "stopped"
    assert below
    _, alive = psutil.wait_procs([psutil.Process(p) for p in below if psutil.pid_exists(p)], 10)
    assert not alive, alive


def test_a_dead_server_is_replaced_and_the_server_ends_with_its_socket(
    starter: _forkserver.GuardStarter,
) -> None:
    assert out_lines(supervise(launch("print('first')"))) == ["first"]
    (server,) = _server_pids()
    os.kill(server, signal.SIGKILL)
    psutil.Process(server).wait(10)
    assert out_lines(supervise(launch("print('second')"))) == ["second"]  # started the old way
    assert out_lines(supervise(launch("print('third')"))) == ["third"]  # through a new server
    (replacement,) = _server_pids()
    assert replacement != server
    starter.close()  # as the agent's process ending closes its end
    assert not psutil.pid_exists(replacement) or psutil.Process(replacement).wait(10) == 0
