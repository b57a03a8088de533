"""The session's node agents: one per node it uses, started on demand, retired when idle.

An agent starts on a node the first time a worker is placed there (the one
on the session's own node starts with the session, so the first launch finds
it warm). Agents hold no resources (``num_cpus=0``) and are pinned to their
node. The pool sends each agent the workers placed on its node in batches
(one ``start`` call per agent per turn of the loop), stops them by id, and
consumes each agent's event stream on the pump's loop.

An agent with no worker for ``idle_s`` is retired (the session's own node's
aside): Ray counts a node holding any leased worker process as busy, so an
idle agent would keep an autoscaler from removing its node. The next worker
placed there starts a new one.

The agent on the session's own node sends its events on a local socket
instead of its Ray stream (``_eventsocket.py``); its stream still tells
when it ends. With an own head that agent is a child process of the
session instead of a Ray actor (``_homeagent.py``): every call goes on its
socket, and its process's end tells when it ends.

An agent that dies (its node lost, killed, out of memory) is classified
once, not once per worker (``_rayerrors.agent_death``, on a thread of its
own), and its workers are reported ended with that reason; the next worker
placed on its node gets a new agent.

Every method but ``start_home`` runs on the pump's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cmlray import _eventsocket, _homeagent, _rayerrors
from cmlray._homeagent import HomeProcess
from cmlray._homecalls import HomeCalls
from cmlray._launch import Where, WorkerLaunch
from cmlray._nodeagent import NodeAgent
from cmlray._outbox import Event
from cmlray._rayerrors import Death

AGENT_CONCURRENCY = 100_000  # calls in flight: starts, stops, pings, file chunks
STREAM_WINDOW_BATCHES = 32  # batches an agent may stream ahead of the session
AGENT_IDLE_S = 5.0
SOCKET_DRAIN_S = 5.0  # a dead agent's socket: its last batches are read before its death is

Deaths = Callable[[str, list[str], Death], None]  # (node id, its workers, why)


@dataclass(eq=False)
class _Agent:
    handle: Any
    node_id: str
    workers: set[str] = field(default_factory=set)
    pending: list[WorkerLaunch] = field(default_factory=list)
    flushing: bool = False
    retired: bool = False
    idle_timer: asyncio.TimerHandle | None = None
    local: _eventsocket.Address | None = None  # its events' socket, when it has one
    local_ended: asyncio.Future[None] | None = None
    ray_batches: int = 0  # batches that came on its Ray stream (none while its socket holds)
    process: HomeProcess | None = None  # a process of the session (then no Ray handle)

    @property
    def actor_id(self) -> str:
        return str(self.handle._actor_id.hex())


class AgentPool:
    """Finds or starts the agent of a node, follows its events, ends them all with the session.

    Args:
        lease_s: how long a remote agent waits for an unreachable session (None: never).
        idle_s: retire an agent that has had no worker this long (None: never).
        on_events: a batch of an agent's events (on the loop).
        on_death: an agent died; its workers and why (on the loop).
        socket_dir: where the home agent's event socket goes (None: the system's temp dir).
        home_process: the process of the home agent, started with the own head
            (``_homeagent.py``); its replacements are started the same way.
            None: the home agent is a Ray actor.
    """

    def __init__(
        self,
        *,
        startup_env: dict[str, str],
        node_env: bool,
        lease_s: float | None,
        idle_s: float | None,
        on_events: Callable[[list[Event]], None],
        on_death: Deaths,
        loop: asyncio.AbstractEventLoop,
        socket_dir: str | None = None,
        home_process: HomeProcess | None = None,
    ) -> None:
        import ray

        self._actor_class: Any = ray.remote(NodeAgent)
        self._lease_s = lease_s
        self._startup = (startup_env, node_env)
        self._idle_s = idle_s
        self._on_events = on_events
        self._on_death = on_death
        self._loop = loop
        self._agents: dict[str, _Agent] = {}
        self._of_worker: dict[str, _Agent] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._home: Any = None
        self._home_node: str | None = None
        self._home_ip = ""
        self._home_process = home_process  # until the home agent uses it
        self._process_dir = None if home_process is None else home_process.work_dir
        self.calls = HomeCalls(loop)  # the session's queue calls, once the home agent is in
        self._listener = _eventsocket.EventListener(loop, socket_dir, self.calls)

    def start_home(self) -> Any:
        """Start the agent of the session's own node now (from any thread), without waiting.

        It hosts the session's queues; the other agents send the files
        workers send home to this one and, with a lease (attached sessions),
        check that it answers, to learn when their node is cut off from the
        session. Returns its Ray handle, or its process (``HomeProcess``), or
        None: the session has no node of its own.
        """
        import ray

        try:
            node_id = ray.get_runtime_context().get_node_id()
            self._home_ip = ray.util.get_node_ip_address()
        except Exception:  # no node of its own
            return None
        self._home_node = node_id
        agent = self._start_agent(node_id)
        self._home = agent.process or agent.handle
        return self._home

    def start(self, node_id: str, launch: WorkerLaunch) -> None:
        """Start a worker placed on ``node_id`` (batched with others of this turn)."""
        agent = self._agents.get(node_id) or self._start_agent(node_id)
        if agent.idle_timer is not None:
            agent.idle_timer.cancel()
            agent.idle_timer = None
        agent.workers.add(launch.worker_id)
        agent.pending.append(launch)
        self._of_worker[launch.worker_id] = agent
        if not agent.flushing:
            agent.flushing = True
            self._loop.call_soon(self._flush, agent)

    def _flush(self, agent: _Agent) -> None:
        launches, agent.pending, agent.flushing = agent.pending, [], False
        if launches and not agent.retired:
            self._send(agent, "start", launches)

    def _send(self, agent: _Agent, method: str, *args: Any) -> None:
        """Call ``method`` on the agent, not waiting (its events tell what came of it)."""
        _homeagent.call(agent.process or agent.handle, self.calls, method, *args)

    def stop(
        self, worker_ids: list[str], grace_period_s: float, status: str, reason: str
    ) -> list[str]:
        """Stop these workers where they run; returns those that run nowhere (yet)."""
        by_agent: dict[_Agent, list[str]] = {}
        nowhere = []
        for worker_id in worker_ids:
            agent = self._of_worker.get(worker_id)
            if agent is None:
                nowhere.append(worker_id)
            else:
                by_agent.setdefault(agent, []).append(worker_id)
        for agent, ids in by_agent.items():
            if agent.pending:  # starts go out before the stops that follow them
                self._flush(agent)
            self._send(agent, "stop", ids, grace_period_s, status, reason)
        return nowhere

    def ended(self, worker_ids: list[str]) -> None:
        """These workers ended: an agent left with none may retire."""
        for worker_id in worker_ids:
            agent = self._of_worker.pop(worker_id, None)
            if agent is None:
                continue
            agent.workers.discard(worker_id)
            if not agent.workers and self._idle_s is not None and agent.node_id != self._home_node:
                agent.idle_timer = self._loop.call_later(self._idle_s, self._retire, agent)

    def node_of(self, worker_id: str) -> str | None:
        agent = self._of_worker.get(worker_id)
        return None if agent is None else agent.node_id

    def _retire(self, agent: _Agent) -> None:
        if agent.workers or agent.retired or self._agents.get(agent.node_id) is not agent:
            return
        agent.retired = True
        del self._agents[agent.node_id]
        self._spawn(asyncio.to_thread(_kill, agent.handle))

    def _start_agent(self, node_id: str) -> _Agent:
        home = node_id == self._home_node
        if home and self._process_dir is not None:
            agent = self._start_process(node_id, self._process_dir)
            if agent is not None:
                return agent
        if home:
            self.calls.through_ray()
        return self._start_actor(node_id)

    def _start_process(self, node_id: str, work_dir: str) -> _Agent | None:
        """The home agent as a process of the session; None if it cannot be (then an actor)."""
        try:
            local, ended = self._listener.expect(self._on_events)
        except OSError:
            return None
        self.calls.hold()
        process, self._home_process = self._home_process, None
        try:
            process = process or _homeagent.start(work_dir, self._startup[0])
        except OSError:
            self._listener.forget(local)
            return None
        process.begin(local, Where(self._home_ip, node_id))
        agent = _Agent(None, node_id, local=local, local_ended=ended, process=process)
        self._agents[node_id] = agent
        asyncio.run_coroutine_threadsafe(self._watch(agent, process), self._loop)
        return agent

    async def _watch(self, agent: _Agent, process: HomeProcess) -> None:
        """The home process's end: once its last batches are read, its workers' too."""
        await _homeagent.exited(process)
        await self._socket_drained(agent)
        death = process.death()
        self.calls.detach(death.words)
        if not agent.retired:
            self._died(agent, death)

    def _start_actor(self, node_id: str) -> _Agent:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        handle = self._actor_class.options(
            num_cpus=0,
            max_concurrency=AGENT_CONCURRENCY,
            max_restarts=0,
            max_task_retries=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
        ).remote(self._home, self._lease_s or 0.0, *self._startup)
        agent = _Agent(handle, node_id)
        self._agents[node_id] = agent
        if node_id == self._home_node:
            with contextlib.suppress(OSError):  # no socket: its events go through Ray
                agent.local, agent.local_ended = self._listener.expect(self._on_events)
        stream = handle.events.options(
            num_returns="streaming", _generator_backpressure_num_objects=STREAM_WINDOW_BATCHES
        ).remote(agent.local)
        asyncio.run_coroutine_threadsafe(self._follow(agent, stream), self._loop)
        return agent

    async def _follow(self, agent: _Agent, stream: Any) -> None:
        try:
            async for ref in stream:
                agent.ray_batches += 1
                self._on_events(await ref)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the agent is gone: say why, once for all its workers
            await self._socket_drained(agent)
            if agent.retired:
                return
            death = await asyncio.to_thread(
                _rayerrors.agent_death, exc, agent.actor_id, agent.node_id
            )
            self._died(agent, death)

    def _died(self, agent: _Agent, death: Death) -> None:
        self._forget(agent)
        workers = list(agent.workers)
        for worker_id in workers:
            self._of_worker.pop(worker_id, None)
        agent.workers.clear()
        self._on_death(agent.node_id, workers, death)

    async def _socket_drained(self, agent: _Agent) -> None:
        """Wait until the batches the agent wrote on its socket before it died are in."""
        if agent.local is None or agent.local_ended is None:
            return
        self._listener.forget(agent.local)  # it never connected: nothing to wait for
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(agent.local_ended), SOCKET_DRAIN_S)

    def _forget(self, agent: _Agent) -> None:
        agent.retired = True
        if self._agents.get(agent.node_id) is agent:
            del self._agents[agent.node_id]

    def _spawn(self, coroutine: Any) -> None:
        task = self._loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        """Kill every agent (on the loop): their guards end whatever program is left."""
        agents = list(self._agents.values())
        self._agents.clear()
        for agent in agents:
            agent.retired = True
            if agent.process is not None:
                agent.process.end()
            else:
                _kill(agent.handle)
        self._listener.close()


def _kill(handle: Any) -> None:
    import ray

    with contextlib.suppress(Exception):  # already gone with its node
        ray.kill(handle, no_restart=True)
