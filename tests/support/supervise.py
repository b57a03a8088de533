"""Running workers' supervisors without Ray: the node agent's side, in the test process.

A :class:`~cmlray._supervisor.WorkerSupervisor` needs only an event loop and
an outbox; here a fresh loop runs it (several, for tests of many workers at
once), so the guard, the program and the event path are exercised for real
in a fraction of a second, without a Ray session.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from typing import Any

import psutil

from cmlray import _cmdline
from cmlray._launch import Where, WorkerLaunch
from cmlray._outbox import Outbox
from cmlray._services import ProgramServices
from cmlray._supervisor import WorkerSupervisor, start_all

PY = sys.executable
WHERE = Where(ip="127.0.0.1", node_id="local")
Events = list[tuple[str, Any]]


def launch(
    code: str,
    grace_period_s: float = 5.0,
    worker_id: str = "w" * 16,
    *,
    script: str = "",
    env: dict[str, str] | None = None,
    **extra: Any,
) -> WorkerLaunch:
    """A worker running Python (or ``!`` shell) ``code``, or ``script``, in the current directory.

    ``env``: variables added to the test process's environment.
    """
    argv = _cmdline.build_argv(kernel="python3", script=script, code=code, python=PY)
    full_env = dict(os.environ, PYTHONUNBUFFERED="1") | (env or {})
    return WorkerLaunch(worker_id, argv, full_env, os.getcwd(), grace_period_s, **extra)


def supervise_many(
    launches: list[WorkerLaunch],
    *,
    when: Callable[[str, Events], bool] | None = None,
    then: Callable[[WorkerSupervisor], None] | None = None,
    timeout_s: float = 120.0,
) -> dict[str, Events]:
    """Run supervisors for ``launches`` on a fresh loop until all ended; each one's events.

    ``then(supervisor)`` is called once for a worker the first time
    ``when(worker_id, its events so far)`` holds (to stop it mid-run, say).
    """

    async def main() -> dict[str, Events]:
        outbox = Outbox(window_s=0.001)
        supervisors = {
            item.worker_id: WorkerSupervisor(
                item, WHERE, outbox, ProgramServices(item.worker_id, item.payload)
            )
            for item in launches
        }
        starting = asyncio.create_task(start_all(list(supervisors.values())))
        events: dict[str, Events] = {worker_id: [] for worker_id in supervisors}
        fired: set[str] = set()
        ended: set[str] = set()
        async for batch in outbox.batches():
            for worker_id, kind, payload in batch:
                events[worker_id].append((kind, payload))
                if kind == "exited":
                    ended.add(worker_id)
            for worker_id, seen in events.items():
                if when and then and worker_id not in fired and when(worker_id, seen):
                    fired.add(worker_id)
                    then(supervisors[worker_id])
            if len(ended) == len(supervisors):
                break
        await starting
        return events

    return asyncio.run(asyncio.wait_for(main(), timeout_s))


def supervise(
    item: WorkerLaunch,
    *,
    when: Callable[[Events], bool] | None = None,
    then: Callable[[WorkerSupervisor], None] | None = None,
) -> Events:
    """One worker's events, from ``placed`` to ``exited``."""
    found = supervise_many([item], when=(lambda _id, seen: when(seen)) if when else None, then=then)
    return found[item.worker_id]


def out_lines(events: Events, stream: str = "out") -> list[str]:
    return [line for kind, lines in events if kind == stream for line in lines]


def final(events: Events) -> dict[str, Any]:
    kind, payload = events[-1]
    assert kind == "exited", events
    assert isinstance(payload, dict)
    return payload


def descendants_named(root: int, text: str) -> list[int]:
    """Descendants of ``root`` whose command line contains ``text``."""
    found = []
    for proc in psutil.Process(root).children(recursive=True):
        try:
            if text in " ".join(proc.cmdline()):
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found
