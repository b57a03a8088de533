"""What the session sends a node to start one worker, and where that node is.

``WorkerLaunch`` crosses from the session to its node agent (pickled by
Ray); the agent fills in the node-specific parts (its interpreter, its
environment, its IP) when it starts the program (``_supervisor.py``). Plain
data: the session imports it without the node side.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class WorkerLaunch:
    """What a node agent needs to start one worker's program (built by the session)."""

    worker_id: str
    argv: list[str]
    env: dict[str, str]
    cwd: str
    grace_period_s: float = 5.0
    payload: bytes | None = None  # a cloudpickled (fn, args, kwargs), for fn= workers
    memory_limit_bytes: int | None = None
    timeout_s: float | None = None
    # Attached to a cluster: the program's environment starts from its node's
    # (the agent's), not the session's, whose paths may not exist there.
    node_env: bool = False
    home_dir: str = ""  # the session's project dir, on the session's host
    gpus: tuple[str, ...] = ()  # the GPU ids its reservation holds


@dataclass(frozen=True)
class Where:
    """The node an agent runs on."""

    ip: str
    node_id: str
