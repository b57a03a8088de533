"""A worker's supervision without Ray: the guard, the program, the events (``_supervisor.py``).

The node agent's side runs here on an event loop of the test's own
(tests/support/supervise.py): real guards, real programs, the real event
path, a few hundred milliseconds a test. Guards here start as scripts (the
fork server is tested in test_forkserver.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import time

import psutil
import pytest

from cmlray._launch import WorkerLaunch
from cmlray._outbox import Outbox
from cmlray._services import ProgramServices
from cmlray._supervisor import WorkerSupervisor, start_all
from tests.support.supervise import (
    WHERE,
    descendants_named,
    final,
    launch,
    out_lines,
    supervise,
    supervise_many,
)

pytestmark = pytest.mark.usefixtures("no_leaks")


def test_events_come_placed_started_lines_then_exit() -> None:
    events = supervise(launch("import sys\nprint('a')\nprint('b', file=sys.stderr)\nsys.exit(4)"))
    kinds = [kind for kind, _ in events]
    assert kinds[:2] == ["placed", "started"] and kinds[-1] == "exited"
    assert (out_lines(events), out_lines(events, "err")) == (["a"], ["b"])
    ended = final(events)
    assert (ended["status"], ended["exit_code"], ended["reason"]) == ("failed", 4, "exit code 4")


def test_the_program_sees_its_node_variables_and_gpus() -> None:
    code = (
        "import os\nprint(os.environ['CDSW_IP_ADDRESS'], os.environ['CDSW_APP_PORT'],"
        " repr(os.environ['CUDA_VISIBLE_DEVICES']))"
    )
    events = supervise(launch(code, gpus=("1", "3")))
    placed = events[0][1]
    assert out_lines(events) == [f"127.0.0.1 {placed['app_port']} '1,3'"]
    assert placed["gpus"] == ["1", "3"]


def test_the_program_has_a_private_tmpdir_removed_with_it() -> None:
    code = (
        "import os, tempfile\nopen(os.path.join(tempfile.gettempdir(), 'left'), 'w').close()\n"
        "os.mkdir(os.path.join(tempfile.gettempdir(), 'sub'))\nprint(tempfile.gettempdir())"
    )
    events = supervise(launch(code))
    assert final(events)["status"] == "succeeded"
    (tmp,) = out_lines(events)
    base = os.environ.get("TMPDIR") or "/tmp"
    assert os.path.dirname(tmp) == base and os.path.basename(tmp).startswith("cmlray-w")
    assert not os.path.exists(tmp)  # gone, with what the program left in it


def test_a_missing_executable_fails_with_its_reason() -> None:
    item = WorkerLaunch("w" * 16, ["/no/such/program"], dict(os.environ), os.getcwd())
    ended = final(supervise(item))
    assert ended["status"] == "failed" and "cannot start '/no/such/program'" in ended["reason"]


def _tree(events: list[tuple[str, object]], *commands: str, timeout_s: float = 60.0) -> list[int]:
    """The guard's pid and its descendants', once each of ``commands`` runs below it.

    Backgrounded children start when the machine gets to them: wait for them
    (a condition), not for a fixed time.
    """
    started = next(p for k, p in events if k == "started")
    assert isinstance(started, dict)
    guard = psutil.Process(started["pid"]).parent()
    assert guard is not None and "cmlray._guard" in " ".join(guard.cmdline())
    deadline = time.monotonic() + timeout_s
    while not all(descendants_named(guard.pid, c) for c in commands):
        assert time.monotonic() < deadline, f"{commands} did not all start below the guard"
        time.sleep(0.02)
    return [guard.pid, *(p.pid for p in guard.children(recursive=True))]


def test_a_stop_ends_the_whole_tree_setsid_children_too() -> None:
    tree: list[int] = []

    def stop(supervisor: WorkerSupervisor, seen: list[tuple[str, object]]) -> None:
        tree.extend(_tree(seen, "sleep 311", "sleep 312"))
        supervisor.stop(2.0)

    seen: list[tuple[str, object]] = []

    def printed(events: list[tuple[str, object]]) -> bool:
        seen[:] = events
        return any(kind == "out" for kind, _ in events)

    events = supervise(
        launch("!setsid sleep 311 & sleep 312 & echo ready; wait", grace_period_s=2),
        when=printed,
        then=lambda supervisor: stop(supervisor, seen),
    )
    assert (final(events)["status"], final(events)["exit_code"]) == ("stopped", -15)
    assert len(tree) >= 4
    _, alive = psutil.wait_procs([psutil.Process(p) for p in tree if psutil.pid_exists(p)], 5)
    assert not alive, alive


def test_the_guard_ends_the_tree_when_its_agent_dies() -> None:
    """The agent's death (its control socket closing) ends the program's tree."""
    tree: list[int] = []
    seen: list[tuple[str, object]] = []

    def printed(events: list[tuple[str, object]]) -> bool:
        seen[:] = events
        return any(kind == "out" for kind, _ in events)

    def agent_dies(supervisor: WorkerSupervisor) -> None:
        tree.extend(_tree(seen, "sleep 313", "sleep 314"))
        assert supervisor._ctl is not None
        supervisor._ctl.shutdown(socket.SHUT_RDWR)  # as the agent process's death closes it

    supervise(launch("!setsid sleep 313 & echo ready; sleep 314"), when=printed, then=agent_dies)
    procs = [psutil.Process(p) for p in tree if psutil.pid_exists(p)]
    _, alive = psutil.wait_procs(procs, 10)
    assert not alive, alive


def test_workers_whose_descriptors_are_numbered_past_1024() -> None:
    """An agent running hundreds of workers holds descriptor numbers past 1,024.

    Guards must wait with poll, not select (which fails past 1,024: every
    worker past about the 200th reported "the guard process died", before
    this was fixed). A thousand descriptors held here make the next ones,
    the workers', number past 1,024, as with 250 workers; guards start as
    scripts here, so they keep those numbers.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"the hard limit on open files is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        launches = [launch(f"!echo {index}", worker_id=f"{index:016d}") for index in range(20)]
        events = supervise_many(launches, timeout_s=240)
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert min(held) < 1024 < max(held)
    reasons = {final(seen)["reason"] for seen in events.values()}
    assert reasons == {"exit code 0"}
    assert all(out_lines(events[f"{i:016d}"]) == [str(i)] for i in range(20))


def test_a_worker_that_cannot_start_names_the_limit_it_hit() -> None:
    """Out of file descriptors: the reason says so (not "the guard process died")."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    async def start_with_no_descriptor_left() -> list[tuple[str, str, object]]:
        outbox = Outbox(window_s=0.0)
        item = launch("print('never')")
        supervisor = WorkerSupervisor(item, WHERE, outbox, ProgramServices(item.worker_id, None))
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 16, hard))
        filler = []
        try:
            with contextlib.suppress(OSError):  # every descriptor left, taken
                while True:
                    filler.append(os.open(os.devnull, os.O_RDONLY))
            await start_all([supervisor])
        finally:
            for fd in filler:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        await asyncio.wait_for(supervisor.ended.wait(), 30)
        return outbox._take()

    events = asyncio.run(start_with_no_descriptor_left())
    kind, ended = events[-1][1], events[-1][2]
    assert kind == "exited" and isinstance(ended, dict), events
    assert ended["status"] == "failed"
    assert "its node agent has too many open files (ulimit -n)" in ended["reason"], ended
