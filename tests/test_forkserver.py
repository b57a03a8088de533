"""Guards forked by the fork server (``_forkserver``), driven without Ray.

A node agent enables the server; here the test process does, so the actor
class runs exactly as in an agent. The rest of the suite runs every worker
through it too (every worker's guard is forked in its agent).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator

import psutil
import pytest

from cmlray import _forkserver
from tests.test_process import _collect, _descendants_named, _launch

pytestmark = pytest.mark.usefixtures("no_leaks")


@pytest.fixture
def starter(monkeypatch: pytest.MonkeyPatch) -> Iterator[_forkserver.GuardStarter]:
    """This process's guards forked by a server of its own, ended after the test."""
    starter = _forkserver.GuardStarter()
    monkeypatch.setattr(_forkserver, "_starter", starter)
    yield starter
    starter.close()


def _out(events: list[tuple[str, object]]) -> list[str]:
    return [line for kind, lines in events if kind == "out" for line in lines]  # type: ignore[union-attr]


def _server_pids() -> list[int]:
    return _descendants_named(os.getpid(), "_forkserver.py")


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
    events = _collect(_launch(code))
    final = events[-1][1]
    assert isinstance(final, dict)
    assert (final["status"], final["exit_code"]) == ("failed", 3)
    assert _out(events) == ["True 127.0.0.1"]
    assert ("err", ["to stderr"]) in events
    assert len(_server_pids()) == 1  # the server stays for the next guard


def test_many_guards_from_one_server_each_get_their_own_fds(
    starter: _forkserver.GuardStarter,
) -> None:
    results: dict[int, list[str]] = {}

    def run(index: int) -> None:
        results[index] = _out(_collect(_launch(f"print({index} * 7)")))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == {i: [str(i * 7)] for i in range(8)}
    assert len(_server_pids()) == 1


def test_a_stop_ends_a_forked_guards_whole_tree(starter: _forkserver.GuardStarter) -> None:
    actor = _launch("!setsid sleep 321 & sleep 322 & echo ready; wait", grace_period_s=2)
    events: list[tuple[str, object]] = []
    below: list[int] = []
    for batch in actor.run():
        events.extend(batch)
        if any(kind == "out" for kind, _ in batch):
            started = next(p for k, p in events if k == "started")
            assert isinstance(started, dict)
            guard = psutil.Process(started["pid"]).parent()
            assert guard is not None and "_forkserver.py" in " ".join(guard.cmdline())
            below = [p.pid for p in guard.children(recursive=True)]
            threading.Thread(target=actor.stop, args=(2.0,)).start()
    final = events[-1][1]
    assert isinstance(final, dict) and final["status"] == "stopped"
    assert below
    _, alive = psutil.wait_procs([psutil.Process(p) for p in below if psutil.pid_exists(p)], 10)
    assert not alive, alive


def test_a_dead_server_is_replaced_and_the_server_ends_with_its_socket(
    starter: _forkserver.GuardStarter,
) -> None:
    assert _out(_collect(_launch("print('first')"))) == ["first"]
    (server,) = _server_pids()
    os.kill(server, signal.SIGKILL)
    psutil.Process(server).wait(10)
    assert _out(_collect(_launch("print('second')"))) == ["second"]  # started the old way
    assert _out(_collect(_launch("print('third')"))) == ["third"]  # through a new server
    (replacement,) = _server_pids()
    assert replacement != server
    starter.close()  # as the agent's process ending closes its end
    assert not psutil.pid_exists(replacement) or psutil.Process(replacement).wait(10) == 0
