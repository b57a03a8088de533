"""The session's node agents: one per node it uses, started once, kept warm.

An agent starts on a node the first time a worker is placed there (or ahead
of time: the session starts the one on its own node as it starts, so the
first launch finds it warm) and lives until the session ends. Agents hold no
resources (``num_cpus=0``), are pinned to their node, and are never restarted:
an agent that dies fails the workers it ran, and the next worker placed on
its node gets a new one.
"""

from __future__ import annotations

import threading
from typing import Any

from cmlray._agent import NodeAgent

AGENT_CONCURRENCY = 100_000  # one call per running worker, plus stops and pings


class AgentStartError(Exception):
    """A node's agent could not start (shown as the worker's reason)."""


class AgentPool:
    """Finds or starts the agent of a node; ends them all with the session."""

    def __init__(self, lease_s: float | None) -> None:
        import ray

        self._actor_class: Any = ray.remote(NodeAgent)
        self._lease_s = lease_s
        self._lock = threading.Lock()
        self._agents: dict[str, Any] = {}
        self._ready: dict[str, Any] = {}
        self._home: Any = None

    def start_home(self) -> None:
        """Start the agent of the session's own node now, without waiting for it.

        The other agents send the files workers send home to this one and,
        with a lease (attached sessions), check that it answers, to learn when
        their node is cut off from the session.
        """
        import ray

        try:
            node_id = ray.get_runtime_context().get_node_id()
        except Exception:  # a Ray Client session has no node of its own
            return
        self._home = self.handle(node_id)

    def handle(self, node_id: str) -> Any:
        """The agent of ``node_id``, started if there is none."""
        with self._lock:
            agent = self._agents.get(node_id)
            if agent is None:
                agent = self._start(node_id)
                self._agents[node_id] = agent
                self._ready[node_id] = agent.ready.remote()
            return agent

    async def ready(self, node_id: str) -> Any:
        """The agent of ``node_id`` once it answers."""
        agent = self.handle(node_id)
        try:
            await self._ready[node_id]
        except Exception as exc:
            self.forget(node_id, agent)
            raise AgentStartError(f"cmlray's agent could not start on node {node_id}") from exc
        return agent

    def forget(self, node_id: str, agent: Any) -> None:
        """An agent died: the next worker on its node starts a new one."""
        with self._lock:
            if self._agents.get(node_id) is agent:
                del self._agents[node_id]
                del self._ready[node_id]

    def close(self) -> None:
        """Kill every agent: their guards end whatever program is left."""
        import ray

        with self._lock:
            agents, self._agents = list(self._agents.values()), {}
            self._ready.clear()
        for agent in agents:
            try:
                ray.kill(agent, no_restart=True)
            except Exception:  # already gone with its node
                continue

    def _start(self, node_id: str) -> Any:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        return self._actor_class.options(
            num_cpus=0,
            max_concurrency=AGENT_CONCURRENCY,
            max_restarts=0,
            max_task_retries=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
        ).remote(self._home, self._lease_s or 0.0)
