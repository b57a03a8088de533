"""The session: one Ray connection, this process's workers, and their end.

A :class:`Session` is built complete from its :class:`~cmlray._config.SessionConfig`
and its Ray head (``_lifecycle.py`` starts and ends it). It owns the worker
registry, the event pump and its loop, the reservations, the node agents,
the console relay, the log store and the queues. It only ever lists or
stops the workers it launched itself, so several sessions can share a
cluster.

The path of a worker: ``launch`` records it and asks the reservations for a
slot of its shape (on the pump's loop); once it has one, its node's agent
is told to start it; the agent's events come back through the pump into the
registry, the relay and the logs; when it ends, its slot goes to the next
worker of its shape, and every queue takes back the items it held.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import os
from collections.abc import Callable, Iterable
from typing import Any

from cmlray import _cluster, _nodetypes, _zygote
from cmlray._agentpool import AgentPool
from cmlray._cmdline import NODE_PYTHON
from cmlray._config import SessionConfig
from cmlray._head import Head
from cmlray._ids import new_id
from cmlray._launch import WorkerLaunch
from cmlray._logs import WorkerLogs
from cmlray._nodetypes import Catalog
from cmlray._pump import EventPump
from cmlray._queuebook import QueueBook
from cmlray._queueresults import Page, ResultPages
from cmlray._rayerrors import Death
from cmlray._record import WorkerRecord
from cmlray._registry import Registry
from cmlray._relay import Relay
from cmlray._reservations import ReservationPool
from cmlray._slabs import Shape
from cmlray._spec import WorkerSpec, portable_environment
from cmlray._waiting import Explainer
from cmlray.errors import SessionError

STOP_SLACK_S = 15.0


def _final(record: WorkerRecord) -> bool:
    return record.final


class Session:
    """A live session; use ``cmlray.init`` / ``cmlray.shutdown`` rather than this."""

    def __init__(
        self, config: SessionConfig, head: Head, on_closed: Callable[[], None] = lambda: None
    ) -> None:
        import ray

        self.id = new_id()
        self.config = config
        self.head = head
        self.project_dir = config.project_dir
        # An own head's nodes are all on this machine: loopback reaches the session.
        self.master_ip = "127.0.0.1" if head.owns_head else ray.util.get_node_ip_address()
        self.registry = Registry()
        self.relay = Relay(config.console)
        # Whole output for cmlray.logs; without log_dir, spilled into the head's private
        # temp dir (swept by its reaper on every exit path), or the system's when attached.
        self.logs = WorkerLogs(config.log_dir, spill_root=head.temp_dir)
        self.pump = EventPump(
            self.registry, self.relay, self.logs, self._ended, self._queue_results
        )
        self.agents = AgentPool(
            startup_env=self._startup_env(),
            node_env=config.attached,
            lease_s=None if head.owns_head else config.lease_s,
            idle_s=config.agent_idle_s,
            on_events=self.pump.handle,
            on_death=self._agent_died,
            loop=self.pump.loop,
            socket_dir=head.temp_dir,
            home_process=head.home_agent,
        )
        self.reservations = ReservationPool(self._placed, self._not_placed)
        self.catalog = Catalog(declared=dict(config.node_types), reported=_nodetypes.reported())
        self.explainer = Explainer(self.catalog, self.registry, self.reservations, self._not_placed)
        self._waiting: dict[str, WorkerLaunch] = {}  # on the loop: launched, no slot yet
        self._placed_on: dict[str, WorkerLaunch] = {}  # on the loop: has a slot, not ended
        self._shapes: dict[str, Shape] = {}
        self._placements: dict[str, int] = {}  # how often each worker got a slot
        self._graces: dict[str, float] = {}
        self._names = itertools.count(1)
        self._closed = False
        self._on_closed = on_closed
        self.queues = QueueBook(self.agents.start_home(), self.agents.calls)  # queues live there

    @property
    def closed(self) -> bool:
        """Whether the session has been shut down (Ray may be gone with it)."""
        return self._closed

    def identity(self, worker_id: str) -> dict[str, str]:
        """The variables that tell a worker who it and its session are."""
        return {
            "CML_MASTER_IP": self.master_ip,
            "CDSW_MASTER_IP": self.master_ip,
            "CDSW_MASTER_ID": self.id,
            "CDSW_ENGINE_ID": worker_id,
        }

    # Launch --------------------------------------------------------------------------

    def launch(self, spec: WorkerSpec) -> list[dict[str, Any]]:
        """Start ``spec.n`` workers; returns their descriptions in launch order."""
        self._check_open()
        note = _cluster.feasibility(spec, self.catalog)
        records = [self._record(spec, new_id(), index, note) for index in range(spec.n)]
        launches = {record.id: self._launch_of(spec, record.id) for record in records}
        context = contextvars.copy_context()  # where the workers' lines are shown (Jupyter)
        self.registry.add(records)
        for record in records:
            self.relay.colour(record.name)  # colours in launch order, not first output
            self.pump.follow(record.id, record.name, context)
        self.pump.call(self._request, launches, Shape.of(spec))
        return self.registry.describe(launches)

    def _request(self, launches: dict[str, WorkerLaunch], shape: Shape) -> None:
        self._waiting.update(launches)
        self._shapes.update(dict.fromkeys(launches, shape))
        self.reservations.request(list(launches), shape)
        self.explainer.wake()

    def _placed(self, worker_id: str, node_id: str, gpus: tuple[str, ...]) -> None:
        """A worker got its slot: its node's agent starts it (on the loop)."""
        launch = self._waiting.pop(worker_id, None)
        if launch is None:  # stopped meanwhile
            self.reservations.release(worker_id)
            return
        launch.gpus = gpus
        self._placed_on[worker_id] = launch
        self._placements[worker_id] = self._placements.get(worker_id, 0) + 1
        self.agents.start(node_id, launch)

    def _not_placed(self, worker_id: str, reason: str) -> None:
        self._waiting.pop(worker_id, None)
        self.registry.finish(worker_id, "failed", reason)
        self.pump.ended([worker_id])

    def _startup_env(self) -> dict[str, str]:
        """The variables that shape a Python start, as the workers get them by default.

        Each agent starts its zygote for them before the first worker
        (``_zygote.py``); a worker whose ``env`` changes them gets its own.
        """
        base = portable_environment(os.environ) if self.config.attached else os.environ
        return _zygote.workers_startup(base)

    def _launch_of(self, spec: WorkerSpec, worker_id: str) -> WorkerLaunch:
        """What the worker's node needs to start its program."""
        argv, cwd = spec.argv(python=NODE_PYTHON), self.project_dir
        if self.config.ships_project:
            argv = [_relative(arg, self.project_dir) for arg in argv]
            cwd = ""  # the agent's own working dir: its node's copy of the project
        base = portable_environment(os.environ) if self.config.attached else dict(os.environ)
        return WorkerLaunch(
            worker_id,
            argv,
            spec.worker_env(base, self.identity(worker_id), self.config.env_vars),
            cwd,
            spec.grace_period_s,
            spec.payload,
            memory_limit_bytes=spec.memory_bytes,
            timeout_s=spec.timeout_s,
            node_env=self.config.attached,
            home_dir=self.project_dir,
        )

    def _record(
        self, spec: WorkerSpec, worker_id: str, index: int, note: str | None
    ) -> WorkerRecord:
        if spec.name is None:
            name = f"worker-{next(self._names)}"
        else:
            name = spec.name if spec.n == 1 else f"{spec.name}-{index + 1}"
        self._graces[worker_id] = spec.grace_period_s
        return WorkerRecord(
            id=worker_id,
            name=name,
            cpu=spec.cpu,
            memory=spec.memory_gib,
            nvidia_gpu=spec.nvidia_gpu,
            command=spec.command_text(),
            reason=note,  # why it will wait, when that is known at once
        )

    # Ends ----------------------------------------------------------------------------

    def _ended(self, worker_ids: list[str]) -> None:
        """Workers ended: slots back, agents told, queue items back at once (on the loop)."""
        for worker_id in worker_ids:
            self.reservations.release(worker_id)
            self._placed_on.pop(worker_id, None)
            self._shapes.pop(worker_id, None)
            self._placements.pop(worker_id, None)
        self.agents.ended(worker_ids)
        reasons = []
        for worker_id in worker_ids:
            record = self.registry.get(worker_id)
            reasons.append(
                (worker_id, f"its worker {record.name} ended ({record.status}: {record.reason})")
            )
        self.queues.workers_ended(reasons)

    def _agent_died(self, node_id: str, worker_ids: list[str], death: Death) -> None:
        if death.node_gone:
            self.reservations.drop_node(node_id)
        again = [w for w in worker_ids if self._places_again(w, death)]
        if again:
            why = f"its node went before it started ({death.words}): waiting for a slot again"
            self.registry.apply_batch((w, "placed_again", why) for w in again)
            for worker_id in again:
                launch = self._placed_on.pop(worker_id)
                launch.gpus = ()
                self._request({worker_id: launch}, self._shapes[worker_id])
        failed = [w for w in worker_ids if w not in again]
        self.registry.finish_many(failed, "failed", death.words)
        self.pump.ended(failed)

    def _places_again(self, worker_id: str, death: Death) -> bool:
        if worker_id not in self._placed_on or worker_id not in self._shapes:
            return False
        status = self.registry.get(worker_id).status
        return death.places_again(status, self._placements.get(worker_id, 0))

    # Queues --------------------------------------------------------------------------

    def create_queue(
        self, name: str, max_attempts: int, lease_timeout_s: float
    ) -> tuple[Any, ResultPages]:
        """Start serving queue ``name`` (one per name): its host agent, where its results arrive."""
        self._check_open()
        return self.queues.create(name, max_attempts, lease_timeout_s)

    def drop_queue(self, name: str) -> None:
        """Forget a drained queue, here and in the agent hosting it."""
        self.queues.drop(name)

    def _queue_results(self, payload: tuple[str, int, Page, bool]) -> None:
        """A page of a queue's results from its host (on the loop)."""
        self.queues.received(*payload)

    def could_serve(self, name: str) -> bool:
        """Whether a live worker of this session serves queue ``name``, or may yet."""
        return self.queues.could_serve(name, set(self.registry.live_ids()))

    # Stop ----------------------------------------------------------------------------

    def stop(
        self, worker_ids: Iterable[str], grace_period_s: float | None = None
    ) -> list[dict[str, Any]]:
        """Stop workers (SIGTERM, grace, SIGKILL on each program's whole tree).

        Returns their final descriptions once every one of them has ended.
        """
        ids = list(dict.fromkeys(worker_ids))
        graces = {i: self._graces[i] if grace_period_s is None else grace_period_s for i in ids}
        self.pump.run(self._stop_on_loop(graces))
        longest = max(graces.values(), default=0.0)
        if not self.registry.wait_until(ids, _final, longest + STOP_SLACK_S):
            late = [i for i in ids if not self.registry.get(i).final]
            self.registry.finish_many(late, "stopped", "stopped by user (its agent did not answer)")
            self.pump.call(self.pump.ended, late)
        return self.registry.describe(ids)

    async def _stop_on_loop(self, graces: dict[str, float]) -> None:
        by_grace: dict[float, list[str]] = {}
        unplaced = []
        for worker_id, grace in graces.items():
            if self.registry.get(worker_id).final:
                continue
            if self._waiting.pop(worker_id, None) is not None:
                self.reservations.cancel(worker_id)
                unplaced.append(worker_id)
            else:
                by_grace.setdefault(grace, []).append(worker_id)
        for grace, ids in by_grace.items():
            unplaced += self.agents.stop(ids, grace, "stopped", "stopped by user")
        if unplaced:
            self.registry.finish_many(unplaced, "stopped", "stopped by user before it started")
            self.pump.ended(unplaced)

    def close(self) -> None:
        """Stop every worker still running, then end or leave the Ray connection."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self.stop(self.registry.live_ids())
        with contextlib.suppress(Exception):
            self.pump.run(self._close_on_loop(), timeout_s=30)
        self.pump.close()
        self.logs.close_all()
        self.head.close()
        self._on_closed()

    async def _close_on_loop(self) -> None:
        self.reservations.close()
        self.agents.close()

    def _check_open(self) -> None:
        if self._closed:
            raise SessionError("this session has been shut down")


def _relative(arg: str, project_dir: str) -> str:
    """A path inside the project dir made relative to it; anything else unchanged."""
    if os.path.isabs(arg) and arg.startswith(project_dir + os.sep):
        return os.path.relpath(arg, project_dir)
    return arg
