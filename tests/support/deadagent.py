"""A node agent killed under a running worker: what the tests of each kind of agent share."""

from __future__ import annotations

from collections.abc import Callable

import psutil

import cmlray
from cmlray import _lifecycle


def kill_its_agent(kill: Callable[[str], None]) -> str:
    """Start a worker, ``kill`` its agent (given the worker's id); the worker's failure reason.

    Checks that the guard ended the worker's program, and that the next worker
    placed on that node runs under a new agent.
    """
    (worker,) = cmlray.launch_workers(1, cpu=0.25, memory=0.25, code="!echo up; sleep 300")
    registry = _lifecycle.require().registry
    record = registry.get(worker["id"])
    assert registry.wait_for(lambda: "up" in record.tail, 60)
    program = psutil.Process(record.pid)
    kill(worker["id"])
    (failure,) = cmlray.await_workers(worker, timeout_seconds=60)["failures"]
    assert failure["status"] == "failed"
    program.wait(timeout=30)  # raises TimeoutExpired if the guard did not end it
    (after,) = cmlray.launch_workers(1, cpu=0.25, memory=0.25, code="print('after')")
    (done,) = cmlray.await_workers(after, timeout_seconds=120)["workers"]
    assert done["tail"] == ["after"] and done["node_id"] == record.node_id
    return str(failure["reason"])
