"""The session: one Ray connection, this process's workers, and their end.

A session starts lazily with the first API call (or explicitly with
``cmlray.init``) and ends with ``cmlray.shutdown()`` or when the process
exits. It owns the worker registry, the event pump and the console relay.
It only ever lists or stops the workers it launched itself, so several
sessions can share a cluster.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from rich.console import Console

from cmlray import _cluster, _head, _placement, _shipping
from cmlray._actor import WorkerLaunch
from cmlray._agents import AgentPool
from cmlray._boot import Boot
from cmlray._events import EventPump
from cmlray._ids import new_id
from cmlray._logs import WorkerLogs
from cmlray._process import NODE_PYTHON
from cmlray._queuebook import QueueBook
from cmlray._registry import FINAL, Registry, WorkerRecord
from cmlray._relay import Relay
from cmlray._spec import WorkerSpec, portable_environment
from cmlray.errors import SessionError, translate_ray_error

STOP_SLACK_S = 15.0
LEASE_S = 30.0  # CMLRAY_LEASE_S overrides it: how long a cut-off node's agent waits
_BACKPRESSURE_BATCHES = 32


class Session:
    """A live session; use ``cmlray.init`` / ``cmlray.shutdown`` rather than this."""

    def __init__(
        self,
        head: _head.Head,
        project_dir: str,
        console: Console | None,
        log_dir: str | None = None,
    ) -> None:
        import ray

        self.id = new_id()
        self.head = head
        self.project_dir = project_dir
        # An own head's nodes are all on this machine: loopback reaches the session.
        self.master_ip = "127.0.0.1" if head.owns_head else ray.util.get_node_ip_address()
        self.registry = Registry()
        self.relay = Relay(console)
        # Whole output for cmlray.logs; without log_dir, spilled into the head's private
        # temp dir (swept by its reaper on every exit path), or the system's when attached.
        self.logs = WorkerLogs(log_dir or None, spill_root=head.temp_dir)
        self.pump = EventPump(self.registry, self.relay, self._release, self.logs)
        self._names = itertools.count(1)
        self._closed = False
        self._graces: dict[str, float] = {}
        self.queues = QueueBook()
        self._placing = threading.Lock()
        # True when Ray ships the project dir to each node (runtime_env working_dir):
        # workers then run in their node's copy, and scripts resolve against it.
        self.ships_project = False
        # Attached: a program's environment is this process's, less what describes
        # this host (paths, interpreter, Ray), over its node's own environment.
        self.node_env = not head.owns_head
        lease_s = float(os.environ.get("CMLRAY_LEASE_S") or LEASE_S)
        self.agents = AgentPool(lease_s=None if head.owns_head else lease_s)
        self.agents.start_home()
        self.on_closed: Callable[[], None] = lambda: None

    def identity(self, worker_id: str) -> dict[str, str]:
        """The variables that tell a worker who it and its session are."""
        return {
            "CML_MASTER_IP": self.master_ip,
            "CDSW_MASTER_IP": self.master_ip,
            "CDSW_MASTER_ID": self.id,
            "CDSW_ENGINE_ID": worker_id,
        }

    def launch(self, spec: WorkerSpec) -> list[dict[str, Any]]:
        """Start ``spec.n`` workers; returns their descriptions in launch order."""
        self._check_open()
        _cluster.check_feasible(spec, _cluster.alive_nodes())
        records = [self._record(spec, new_id(), index) for index in range(spec.n)]
        launches = [self._launch_of(spec, record.id) for record in records]
        self.registry.add(records)
        try:
            for record, launch in zip(records, launches, strict=True):
                self.relay.colour(record.name)  # colours in launch order, not first output
                self._start(spec, record, launch)
        except BaseException:
            self._abandon(records)
            raise
        return self.registry.describe(r.id for r in records)

    def _launch_of(self, spec: WorkerSpec, worker_id: str) -> WorkerLaunch:
        """What the worker's node needs to start its program."""
        argv, cwd = spec.argv(python=NODE_PYTHON), self.project_dir
        if self.ships_project:
            argv = [_relative(arg, self.project_dir) for arg in argv]
            cwd = ""  # the agent's own working dir: its node's copy of the project
        base = portable_environment(os.environ) if self.node_env else dict(os.environ)
        return WorkerLaunch(
            worker_id,
            argv,
            spec.worker_env(base, self.identity(worker_id)),
            cwd,
            spec.grace_period_s,
            spec.payload,
            memory_limit_bytes=spec.memory_bytes,
            timeout_s=spec.timeout_s,
            node_env=self.node_env,
            home_dir=self.project_dir,
        )

    def _abandon(self, records: list[WorkerRecord]) -> None:
        """A launch failed part way: stop what started, mark the rest failed."""
        started = [r.id for r in records if r.group is not None and not r.final]
        for record in records:
            if record.group is None:
                self.registry.finish(record.id, "failed", "not started: its launch failed")
        with contextlib.suppress(Exception):
            self.stop(started, grace_period_s=0)

    def _record(self, spec: WorkerSpec, worker_id: str, index: int) -> WorkerRecord:
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
        )

    def _start(self, spec: WorkerSpec, record: WorkerRecord, launch: WorkerLaunch) -> None:
        """Reserve the worker's resources; its agent starts it once they are placed."""
        try:
            record.group = _placement.reserve(spec, record.id)
        except Exception as exc:
            self.registry.finish(record.id, "failed", f"could not reserve its resources: {exc}")
            raise translate_ray_error(exc, f"starting worker {record.name}") from exc

        async def open_stream() -> Any:
            node_id = await _placement.placed_node(record.group)
            gpus = await _placement.gpu_ids(record.group, spec.nvidia_gpu)
            agent = await self.agents.ready(node_id)
            with self._placing:
                if record.final:  # stopped while it was waiting for room
                    return None
                record.handle, record.agent_node = agent, node_id
            return agent.run.options(
                num_returns="streaming", _generator_backpressure_num_objects=_BACKPRESSURE_BATCHES
            ).remote(launch, gpus)

        self.pump.follow(record.id, record.name, open_stream)

    def _release(self, worker_id: str) -> None:
        """The worker's stream ended: free its resources, return its queue items at once."""
        record = self.registry.get(worker_id)
        with self._placing:
            agent, record.handle = record.handle, None
            group, record.group = record.group, None
        if group is not None:
            _placement.release(group)
        if agent is not None and (record.reason or "").startswith(_AGENT_GONE):
            self.agents.forget(record.agent_node or "", agent)
        why = f"its worker {record.name} ended ({record.status}: {record.reason})"
        self.queues.worker_ended(worker_id, why)

    def create_queue(self, actor_name: str, actor_class: type, *args: Any) -> Any:
        """Start a queue's actor (named, so workers' agents find it); one per name."""
        self._check_open()
        return self.queues.create(actor_name, actor_class, *args)

    def could_serve(self, queue: Any) -> bool:
        """Whether a live worker of this session serves ``queue``, or may yet."""
        live = {i for i in self.registry.ids() if self.registry.status(i) not in FINAL}
        return self.queues.could_serve(queue, live)

    def stop(
        self, worker_ids: Iterable[str], grace_period_s: float | None = None
    ) -> list[dict[str, Any]]:
        """Stop workers (SIGTERM, grace, SIGKILL on each program's whole tree).

        Returns their final descriptions once every one of them has ended.
        """

        ids = list(dict.fromkeys(worker_ids))
        graces = {i: self._graces[i] if grace_period_s is None else grace_period_s for i in ids}
        for worker_id in ids:
            self._request_stop(worker_id, graces[worker_id])
        longest = max(graces.values(), default=0.0)
        done = self.registry.wait_for(
            lambda: all(self.registry.status(i) in FINAL for i in ids), longest + STOP_SLACK_S
        )
        if not done:
            for worker_id in ids:
                reason = "stopped by user (its agent did not answer)"
                self.registry.finish(worker_id, "stopped", reason)
        return self.registry.describe(ids)

    def _request_stop(self, worker_id: str, grace_period_s: float) -> None:
        record = self.registry.get(worker_id)
        if record.final:
            return
        with self._placing:
            agent = record.handle
            if agent is None:  # not placed yet: nothing runs, give its reservation back
                self.registry.finish(worker_id, "stopped", "stopped by user before it started")
        if agent is None:
            self.pump.cancel(worker_id)
            return
        agent.stop.remote(worker_id, grace_period_s, "stopped", "stopped by user")

    def close(self) -> None:
        """Stop every worker still running, then end or leave the Ray connection."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            pending = [i for i in self.registry.ids() if self.registry.status(i) not in FINAL]
            self.stop(pending)
        self.pump.close()
        if self.logs is not None:
            self.logs.close_all()
        self.queues.close()
        self.agents.close()
        for worker_id in self.registry.ids():
            self._release_group(worker_id)
        _placement.close()
        self.head.close()
        self.on_closed()

    def _release_group(self, worker_id: str) -> None:
        record = self.registry.get(worker_id)
        with self._placing:
            group, record.group = record.group, None
        if group is not None:
            _placement.release(group)

    def _check_open(self) -> None:
        if self._closed:
            raise SessionError("this session has been shut down")


# Reasons that mean the worker's agent is gone (its node's next worker needs a new one).
_AGENT_GONE = ("node lost", "its node's agent died")


def _relative(arg: str, project_dir: str) -> str:
    """A path inside the project dir made relative to it; anything else unchanged."""
    if os.path.isabs(arg) and arg.startswith(project_dir + os.sep):
        return os.path.relpath(arg, project_dir)
    return arg


_lock = threading.RLock()
_current: Session | Boot[Session] | None = None


def start(
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    resources: dict[str, float] | None = None,
    project_dir: str | None = None,
    console: Console | None = None,
    log_dir: str | None = None,
    runtime_env: dict[str, Any] | None = None,
    ship_project: bool = True,
    project_excludes: tuple[str, ...] = (),
    block: bool = True,
    head_services: str = "minimal",
) -> Session | None:
    """Start this process's session (see ``cmlray.init``); None when not ``block``."""
    global _current
    with _lock:
        if _current is not None:
            raise SessionError("a cmlray session is already running: call cmlray.shutdown() first")
        shipped = (runtime_env or {}).get("working_dir")
        project = os.path.abspath(shipped or project_dir or os.getcwd())
        if not os.path.isdir(project):
            raise ValueError(f"project_dir must be an existing directory, got {project_dir!r}")
        address = address or os.environ.get("RAY_ADDRESS") or None
        if address is not None:
            runtime_env = _shipping.attached_runtime_env(
                runtime_env, project, ship_project=ship_project, excludes=project_excludes
            )

        def open_session(boot: Boot[Session] | None = None) -> Session:
            head = _connect(address, num_cpus, num_gpus, resources, runtime_env, head_services)
            try:
                session = Session(head, project, console, log_dir)
            except BaseException:
                head.close()
                raise
            session.ships_project = "working_dir" in (runtime_env or {})
            if boot is not None:
                session.on_closed = boot.release
            # After ray.init, so this runs before Ray's own exit hook (atexit is LIFO).
            atexit.unregister(_at_exit)
            atexit.register(_at_exit)
            return session

        if not block:
            _current = Boot(open_session, project)
            return None
        _current = open_session()
        return _current


def _connect(
    address: str | None,
    num_cpus: int | None,
    num_gpus: int | None,
    resources: dict[str, float] | None,
    runtime_env: dict[str, Any] | None = None,
    head_services: str = "minimal",
) -> _head.Head:
    import ray

    if address is not None:
        return _head.attach(address, runtime_env)
    if ray.is_initialized():  # the user connected Ray themselves: use that connection
        return _head.Head(address=None, owns_head=False, disconnect=False)
    return _head.start_own_head(
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        resources=resources,
        runtime_env=runtime_env,
        head_services=head_services,
    )


def current(create: bool = True) -> Session | None:
    """The running session; started with defaults if there is none and ``create``.

    A session still booting (``init(block=False)``) is waited for.
    """
    global _current
    with _lock:
        if _current is None and create:
            return start()
        pending = _current
    if not isinstance(pending, Boot):
        return pending
    try:
        session = pending.result()
    except BaseException:
        with _lock:
            if _current is pending:
                _current = None
        raise
    with _lock:
        if _current is pending:
            _current = session
    return session


def project_dir() -> str:
    """The running session's project dir, or the one a session started now would get."""
    with _lock:
        return _current.project_dir if _current is not None else os.path.abspath(os.getcwd())


def require() -> Session:
    session = current(create=True)
    assert session is not None
    return session


def shutdown() -> None:
    """End the session: stop its workers, end its head (if it started one)."""
    global _current
    with _lock:
        session, _current = _current, None
    if isinstance(session, Boot):
        try:
            session = session.result()
        except Exception:  # it never started: nothing to end
            return
    if session is not None:
        session.close()


def _at_exit() -> None:
    try:
        shutdown()
    except Exception as exc:  # never let a failed cleanup hide the real exit status
        print(f"cmlray: cleanup at exit failed: {exc}", file=sys.stderr)
