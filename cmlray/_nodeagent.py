"""The node agent: one warm Ray actor per node and session that starts workers.

Starting a Ray actor per worker would cost a fresh Ray worker process each
(Python plus ``import ray``: about a CPU-second). Instead the session keeps
one agent per node it uses, an async actor holding no resources of its own
(``num_cpus=0``). Each worker's CPU, memory and GPUs are reserved by the
session (``_reservations.py``), so Ray still accounts them and nobody
oversubscribes the node; the agent starts workers as the session sends them
(``start``, in batches) and streams every worker's events back through one
streaming generator (``events``, see ``_outbox.py``), or on the session's
node through a local socket (``_eventsocket.py``).

All of it runs on the actor's one event loop: a :class:`WorkerSupervisor`
per worker, asyncio transports on the guards' sockets and the programs'
pipes. Guards are forked by one fork server per agent (``_forkserver.py``).

The agent on the session's own node also hosts the session's queues
(``_queuehost.py``): its programs reach them without a Ray call, the other
agents' programs through this agent. With an own head that agent is no Ray
actor at all but a process of the session (``_homeagent.py``,
``serve_session``), which gets every call of the session on its socket.

Fate-sharing: an agent is owned by the session's driver, so it dies with the
session; each guard ends its program's tree when its agent's control socket
closes, whatever killed the agent. An agent attached to a remote session
also checks that the session can still be reached (``_Lease``): a node cut
off from the session's node for ``lease_s`` stops its workers and exits, so a
network partition leaves no orphaned program holding the node's CPU or GPU.

:class:`NodeAgent` is a plain class, made remote by the session (``_agentpool.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import sys
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from cmlray import _eventsocket, _files, _forkserver, _homecalls, _ports, _zygote
from cmlray._launch import Where, WorkerLaunch
from cmlray._outbox import Event, Outbox
from cmlray._queuehost import QueueHost
from cmlray._services import ProgramServices
from cmlray._supervisor import WorkerSupervisor, node_environment, start_all

LEASE_CHECK_S = 5.0
LOST_GRACE_S = 1.0
# What the session may call on its socket (``_homecalls.py``), beside the queues' calls.
SESSION_CALLS = frozenset(
    {"start", "stop", "open_queue", "drop_queue", "release_queue_items", "queue_servers"}
)


def raise_open_files_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; returns it.

    Each running worker holds four descriptors in its agent (the guard's
    socket, two pipes, the program's channel): hundreds of workers need more
    than the usual soft limit of 1,024.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class NodeAgent:
    """Starts and supervises the workers one session runs on this node."""

    def __init__(
        self,
        home: Any = None,
        lease_s: float = 0.0,
        startup_env: dict[str, str] | None = None,
        node_env: bool = False,
    ) -> None:
        """An agent for one node of one session.

        Args:
            home: the agent on the session's own node (None: this is it), which
                receives the files workers send home and, with ``lease_s``,
                answers the lease checks.
            lease_s: end this node's workers when ``home`` has not answered for
                so long (0: never; an own head's agents share the session's host).
            startup_env: the variables that shape the start of the session's
                Python workers by default (over the node's own with
                ``node_env``, as attached): their zygote is started ahead.
        """
        self._home = home
        _forkserver.enable()  # guards forked, not each a new interpreter
        with contextlib.suppress(OSError):
            _ports.sweep()  # claims left by an agent of this node killed with its guards
        raise_open_files_limit()
        self._cwd = os.getcwd()  # its node's copy of the project, when one was shipped
        self._outbox = Outbox()
        self._workers: dict[str, WorkerSupervisor] = {}
        self._early_stops: dict[str, tuple[float, str, str]] = {}
        self._where: Where | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._calls: asyncio.Task[None] | None = None  # the session's queue calls on its socket
        self._lease = _Lease(self, home, lease_s) if home is not None and lease_s > 0 else None
        self._startup = (startup_env, node_env)
        self._queues = QueueHost(self._outbox.put)  # used on the session's node

    async def ready(self) -> dict[str, Any]:
        """Where the agent runs: its node's IP and id, its interpreter and pid."""
        where = self._node()
        return {
            "ip": where.ip,
            "node_id": where.node_id,
            "python": sys.executable,
            "pid": os.getpid(),
        }

    def warm(self) -> None:
        """Start the fork server, and the zygote of the session's Python workers (blocking)."""
        _forkserver.prestart(self._default_zygote())

    def locate(self, where: Where) -> None:
        """Its node, for an agent that is no Ray actor to ask Ray (``_homeagent.py``)."""
        self._where = where

    def _default_zygote(self) -> _zygote.Key | None:
        """The zygote of the session's Python workers here, unless their ``env`` says otherwise."""
        startup_env, node_env = self._startup
        if startup_env is None:
            return None
        env = node_environment() if node_env else {}
        return _zygote.startup_key([sys.executable, "-u", "-c", ""], env | startup_env)

    async def ping(self) -> bool:
        """Answers while the agent is reachable (other agents' lease checks)."""
        return True

    async def events(self, local: _eventsocket.Address | None = None) -> AsyncIterator[list[Event]]:
        """Every worker's events, in batches, for as long as the agent lives.

        With ``local`` (the agent on the session's node), the batches go on
        the session's socket instead, while it takes them: this stream then
        carries nothing but the agent's end (``_eventsocket.py``).
        """
        connection = await self._warm(local)
        writer = None
        if connection is not None:
            reader, writer = connection
            self._calls = asyncio.create_task(_homecalls.serve(reader, writer, self.session_call))
        async for batch in self._outbox.batches():
            if writer is not None:
                if await _eventsocket.send(writer, batch):
                    continue
                writer = None  # the socket broke: Ray carries this batch and the rest
            yield batch

    async def serve_session(self, local: _eventsocket.Address) -> str:
        """The agent as a process of the session (``_homeagent.py``): its calls and events.

        Everything goes on the session's socket; returns why it ended (the
        session closed it or is gone, or it could not be reached).
        """
        connection = await self._warm(local)
        if connection is None:
            return "the session's socket could not be reached"
        reader, writer = connection
        calls = asyncio.create_task(_homecalls.serve(reader, writer, self.session_call))
        sending = asyncio.create_task(self._send_batches(writer))
        await asyncio.wait({calls, sending}, return_when=asyncio.FIRST_COMPLETED)
        for task in (calls, sending):
            task.cancel()
        return "the session closed its socket"

    async def _warm(
        self, local: _eventsocket.Address | None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """Start what the first worker needs, and connect to the session's socket if given."""
        self._loop = asyncio.get_running_loop()
        if self._lease is not None:
            self._lease.start(self._loop)
        self._loop.run_in_executor(None, self.warm)  # (again: at once, once warm)
        return None if local is None else await _eventsocket.connect(local)

    async def _send_batches(self, writer: asyncio.StreamWriter) -> None:
        async for batch in self._outbox.batches():
            if not await _eventsocket.send(writer, batch):
                return

    async def session_call(self, name: str | None, method: str, *args: Any) -> Any:
        """A call of the session on its socket: on queue ``name``, or (None) on the agent."""
        if name is not None:
            return await self._queues.call(name, method, *args)
        if method not in SESSION_CALLS:
            raise LookupError(f"the node agent has no call {method!r}")
        return await getattr(self, method)(*args)

    async def start(self, launches: list[WorkerLaunch]) -> None:
        """Start these workers; their events follow on ``events``.

        Their guards are started as one batch through the fork server, on a
        thread (forking blocks), while the loop goes on serving the others.
        """
        where = self._node()
        supervisors = []
        for launch in launches:
            launch.cwd = launch.cwd or self._cwd
            services = ProgramServices(
                launch.worker_id, launch.payload, self._home, launch.home_dir,
                queue_call=self._queue_of_session,
            )  # fmt: skip
            supervisor = WorkerSupervisor(launch, where, self._outbox, services, self._forget)
            self._workers[launch.worker_id] = supervisor
            early = self._early_stops.pop(launch.worker_id, None)
            if early is not None:
                supervisor.stop(*early)
            supervisors.append(supervisor)
        await start_all(supervisors)

    def _forget(self, worker_id: str) -> None:
        """A worker ended (its last event is in the outbox)."""
        self._workers.pop(worker_id, None)

    async def stop(
        self, worker_ids: list[str], grace_period_s: float, status: str, reason: str
    ) -> None:
        """Stop workers' trees (SIGTERM, grace, SIGKILL); before ``start``, when it comes."""
        for worker_id in worker_ids:
            worker = self._workers.get(worker_id)
            if worker is None:
                self._early_stops[worker_id] = (grace_period_s, status, reason)
            else:
                worker.stop(grace_period_s, status, reason)

    async def stop_all(self, grace_period_s: float, status: str, reason: str) -> None:
        for worker in list(self._workers.values()):
            worker.stop(grace_period_s, status, reason)

    async def running(self) -> int:
        """How many workers this agent supervises now."""
        return len(self._workers)

    async def receive_file(
        self, path: str, data: bytes, offset: int, final: bool, token: str
    ) -> None:
        """Write a chunk of a file a worker elsewhere sends home (see ``_files``)."""
        await asyncio.to_thread(_files.write_chunk, path, data, offset, final, token)

    # The session's queues (hosted by the agent of the session's node) -----------------

    async def open_queue(self, name: str, max_attempts: int, lease_timeout_s: float) -> None:
        """Host a new queue of the session (its results go out on ``events``)."""
        self._queues.open(name, max_attempts, lease_timeout_s)

    async def drop_queue(self, name: str) -> None:
        """Forget a drained queue (``QueueHost.drop``)."""
        self._queues.drop(name)

    async def queue_call(self, name: str, method: str, *args: Any) -> Any:
        """A call on a hosted queue (from the session, or another node's agent)."""
        return await self._queues.call(name, method, *args)

    async def release_queue_items(self, ended: list[tuple[str, str]]) -> None:
        """These workers ended (``(worker, why)`` each): the items they held go back."""
        await self._queues.release_workers(ended)

    async def queue_servers(self) -> dict[str, list[str]]:
        """Each hosted queue's workers that have asked it for items."""
        return self._queues.servers()

    async def _queue_of_session(self, name: str, method: str, *args: Any) -> Any:
        """A call on the session's queue for a program here: local on the session's node."""
        if self._home is None:
            return await self._queues.call(name, method, *args)
        return await self._home.queue_call.remote(name, method, *args)

    def _node(self) -> Where:
        if self._where is None:
            import ray

            node_id = ray.get_runtime_context().get_node_id()
            self._where = Where(ray.util.get_node_ip_address(), node_id)
        return self._where


class _Lease:
    """Stops the agent's workers and ends the agent when the session is unreachable."""

    def __init__(self, agent: NodeAgent, home: Any, lease_s: float) -> None:
        self.agent = agent
        self.home = home
        self.lease_s = lease_s
        self._started = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._started:
            self._started = True
            threading.Thread(
                target=self._watch, args=(loop,), name="cmlray-lease", daemon=True
            ).start()

    def _reachable(self) -> bool:
        import ray

        try:
            return bool(ray.get(self.home.ping.remote(), timeout=LEASE_CHECK_S))
        except Exception:
            return False

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
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
        with contextlib.suppress(Exception):
            stopping = self.agent.stop_all(LOST_GRACE_S, "failed", reason)
            asyncio.run_coroutine_threadsafe(stopping, loop).result(5.0)
        deadline = time.monotonic() + LOST_GRACE_S + 10.0
        while self.agent._workers and time.monotonic() < deadline:
            time.sleep(0.1)
        with contextlib.suppress(Exception):
            sys.stderr.write(f"cmlray agent: {reason}; exiting\n")
        os._exit(1)
