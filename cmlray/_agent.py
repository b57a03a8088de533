"""The node agent: one warm Ray actor per node and session that starts workers.

Starting a Ray actor per worker costs a fresh Ray worker process (Python plus
``import ray``: about a CPU-second). Instead, the session keeps one agent per
node it uses, an async actor holding no resources of its own (``num_cpus=0``).
Each worker's CPU, memory and GPUs are reserved by a placement group bundle
of its own (see ``_placement.py``), so Ray still accounts them and nobody
oversubscribes the node; the agent then starts the worker's guard and
program at once and streams its events (``run``, a streaming generator, one
call per worker).

Fate-sharing is unchanged: an agent is owned by the session's driver, so it
dies with the session; each guard ends its program's tree when its agent's
control socket closes, whatever killed the agent.

When the agent serves a session attached to a cluster, it also checks that
the session can still be reached (``_Lease``): a node cut off from the
session's node for ``lease_s`` stops its workers and exits, so a network
partition leaves no orphaned program holding the node's CPU or GPU.

:class:`NodeAgent` is a plain class, made remote by the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from cmlray import _files, _forkserver
from cmlray._actor import Event, Placement, WorkerActor, WorkerLaunch

LEASE_CHECK_S = 5.0
LOST_GRACE_S = 1.0
_DONE = object()


class NodeAgent:
    """Starts and supervises the workers one session runs on this node."""

    def __init__(self, home: Any = None, lease_s: float = 0.0) -> None:
        """An agent for one node of one session.

        Args:
            home: the agent on the session's own node (None: this is it), which
                receives the files workers send home and, with ``lease_s``,
                answers the lease checks.
            lease_s: end this node's workers when ``home`` has not answered for
                so long (0: never; an own head's agents share the session's host).
        """
        self._home = home
        _forkserver.enable()  # guards forked, not each a new interpreter
        self._cwd = os.getcwd()  # its node's copy of the project, when one was shipped
        self._workers: dict[str, WorkerActor] = {}
        self._early_stops: dict[str, tuple[float, str, str]] = {}
        self._node: tuple[str, str] | None = None
        if home is not None and lease_s > 0:
            _Lease(self, home, lease_s).start()

    def ready(self) -> dict[str, Any]:
        """Where the agent runs: its node's IP and id, its interpreter and pid."""
        ip, node_id = self._where()
        return {"ip": ip, "node_id": node_id, "python": sys.executable, "pid": os.getpid()}

    def ping(self) -> bool:
        """Answers while the agent is reachable (other agents' lease checks)."""
        return True

    async def run(self, launch: WorkerLaunch, gpus: list[str]) -> AsyncIterator[list[Event]]:
        """Start ``launch``'s program and stream its events until it has ended."""
        ip, node_id = self._where()
        placement = Placement(ip=ip, node_id=node_id, gpus=tuple(gpus))
        launch.cwd = launch.cwd or self._cwd
        worker = WorkerActor(launch, placement, self._home)
        self._workers[launch.worker_id] = worker
        early = self._early_stops.pop(launch.worker_id, None)
        if early is not None:
            worker.stop(*early)
        try:
            async for batch in _in_thread(worker.run()):
                yield batch
        finally:
            self._workers.pop(launch.worker_id, None)
            # The stream was dropped before the program ended: end it too.
            worker.stop(0.0, "failed", "its event stream was closed")

    def receive_file(self, path: str, data: bytes, offset: int, final: bool, token: str) -> None:
        """Write a chunk of a file a worker elsewhere sends home (see ``_files``)."""
        _files.write_chunk(path, data, offset, final, token)

    def stop(self, worker_id: str, grace_period_s: float, status: str, reason: str) -> None:
        """Stop one worker's tree (SIGTERM, grace, SIGKILL); before ``run``, when it comes."""
        worker = self._workers.get(worker_id)
        if worker is None:
            self._early_stops[worker_id] = (grace_period_s, status, reason)
        else:
            worker.stop(grace_period_s, status, reason)

    def stop_all(self, grace_period_s: float, status: str, reason: str) -> None:
        for worker in list(self._workers.values()):
            worker.stop(grace_period_s, status, reason)

    def running(self) -> int:
        """How many workers this agent supervises now."""
        return len(self._workers)

    def _where(self) -> tuple[str, str]:
        if self._node is None:
            import ray

            node_id = ray.get_runtime_context().get_node_id()
            self._node = (ray.util.get_node_ip_address(), node_id)
        return self._node


async def _in_thread(events: Iterator[list[Event]]) -> AsyncIterator[list[Event]]:
    """A blocking event generator, run on a thread of its own, as an async one.

    The thread waits for room before it reads on (a queue of one batch), so
    Ray's back-pressure on the stream reaches the program's pipes.
    """
    loop = asyncio.get_running_loop()
    batches: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)
    abandoned = threading.Event()

    def hand_over(item: Any) -> None:
        if not abandoned.is_set():
            asyncio.run_coroutine_threadsafe(batches.put(item), loop).result()

    def pump() -> None:
        try:
            for batch in events:  # read to the end even when abandoned: that closes it
                hand_over(batch)
        except BaseException as exc:  # handed to the consumer, raised there
            hand_over(exc)
        else:
            hand_over(_DONE)

    threading.Thread(target=pump, name="cmlray-worker-events", daemon=True).start()
    try:
        while True:
            item = await batches.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        abandoned.set()
        while not batches.empty():  # frees a hand-over blocked on the full queue
            batches.get_nowait()


class _Lease:
    """Stops the agent's workers and ends the agent when the session is unreachable."""

    def __init__(self, agent: NodeAgent, home: Any, lease_s: float) -> None:
        self.agent = agent
        self.home = home
        self.lease_s = lease_s

    def start(self) -> None:
        threading.Thread(target=self._watch, name="cmlray-lease", daemon=True).start()

    def _reachable(self) -> bool:
        import ray

        try:
            return bool(ray.get(self.home.ping.remote(), timeout=LEASE_CHECK_S))
        except Exception:
            return False

    def _watch(self) -> None:
        last_ok = time.monotonic()
        while True:
            if self._reachable():
                last_ok = time.monotonic()
                time.sleep(LEASE_CHECK_S)
            elif time.monotonic() - last_ok >= self.lease_s:
                break
            else:
                time.sleep(1.0)
        reason = f"node lost (cut off from the session for {self.lease_s:g} s)"
        self.agent.stop_all(LOST_GRACE_S, "failed", reason)
        deadline = time.monotonic() + LOST_GRACE_S + 10.0
        while self.agent.running() and time.monotonic() < deadline:
            time.sleep(0.1)
        with contextlib.suppress(Exception):
            sys.stderr.write(f"cmlray agent: {reason}; exiting\n")
        os._exit(1)
