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
from collections.abc import Iterable
from typing import Any

from rich.console import Console

from cmlray import _cluster, _head
from cmlray._actor import WorkerActor, WorkerLaunch
from cmlray._events import EventPump
from cmlray._ids import new_id
from cmlray._logs import WorkerLogs
from cmlray._registry import FINAL, Registry, WorkerRecord
from cmlray._relay import Relay
from cmlray._spec import WorkerSpec
from cmlray.errors import QueueError, SessionError, translate_ray_error

STOP_SLACK_S = 15.0
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
        self._actor_class: Any = ray.remote(WorkerActor)
        self._closed = False
        self._graces: dict[str, float] = {}
        self._queues: dict[str, Any] = {}
        # True when Ray ships the project dir to each node (runtime_env working_dir):
        # workers then run in their node's copy, and scripts resolve against it.
        self.ships_project = False

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
        argv, base_env = spec.argv(), dict(os.environ)
        cwd = self.project_dir
        if self.ships_project:
            argv = [_relative(arg, self.project_dir) for arg in argv]
            cwd = ""  # the actor's own working dir: its node's copy of the project
        records, launches = [], []
        for index in range(spec.n):
            worker_id = new_id()
            records.append(self._record(spec, worker_id, index))
            env = spec.worker_env(base_env, self.identity(worker_id))
            launches.append(
                WorkerLaunch(
                    worker_id,
                    argv,
                    env,
                    cwd,
                    spec.grace_period_s,
                    spec.payload,
                    memory_limit_bytes=spec.memory_bytes,
                    timeout_s=spec.timeout_s,
                )
            )
        self.registry.add(records)
        try:
            for record, launch in zip(records, launches, strict=True):
                self.relay.colour(record.name)  # colours in launch order, not first output
                self._start_actor(spec, record, launch)
        except BaseException:
            self._abandon(records)
            raise
        return self.registry.describe(r.id for r in records)

    def _abandon(self, records: list[WorkerRecord]) -> None:
        """A launch failed part way: stop what started, mark the rest failed."""
        started = [r.id for r in records if r.handle is not None and not r.final]
        for record in records:
            if record.handle is None:
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

    def _start_actor(self, spec: WorkerSpec, record: WorkerRecord, launch: WorkerLaunch) -> None:
        try:
            handle = self._actor_class.options(**spec.actor_options()).remote(launch)
            stream = handle.run.options(
                num_returns="streaming", _generator_backpressure_num_objects=_BACKPRESSURE_BATCHES
            ).remote()
        except Exception as exc:
            self.registry.finish(record.id, "failed", f"could not create its actor: {exc}")
            raise translate_ray_error(exc, f"starting worker {record.name}") from exc
        record.handle = handle
        self.pump.follow(record.id, record.name, stream)

    def _release(self, worker_id: str) -> None:
        """The worker's stream ended: free its actor, return its queue items at once."""
        import ray

        record = self.registry.get(worker_id)
        handle, record.handle = record.handle, None
        if handle is not None:
            with contextlib.suppress(Exception):
                ray.kill(handle, no_restart=True)
        why = f"its worker {record.name} ended ({record.status}: {record.reason})"
        for queue in list(self._queues.values()):
            with contextlib.suppress(Exception):
                queue.release_worker.remote(worker_id, why)

    def create_queue(self, actor_name: str, actor_class: type, *args: Any) -> Any:
        """Start a queue's actor (named, so workers' actors find it); one per name."""
        import ray

        self._check_open()
        if actor_name in self._queues:
            raise QueueError(
                f"this session already has a queue named {actor_name.split(':', 1)[1]!r}"
            )
        try:
            options = {"name": actor_name, "num_cpus": 0, **_on_this_node()}
            handle = ray.remote(actor_class).options(**options).remote(*args)
        except Exception as exc:
            raise translate_ray_error(exc, "starting a queue") from exc
        self._queues[actor_name] = handle
        return handle

    def stop(
        self, worker_ids: Iterable[str], grace_period_s: float | None = None
    ) -> list[dict[str, Any]]:
        """Stop workers (SIGTERM, grace, SIGKILL on each program's whole tree).

        Returns their final descriptions once every one of them has ended.
        """
        import ray

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
                handle = self.registry.get(worker_id).handle
                if handle is not None:
                    with contextlib.suppress(Exception):
                        ray.kill(handle, no_restart=True)
                self.registry.finish(worker_id, "stopped", "stopped by user (its actor was killed)")
        return self.registry.describe(ids)

    def _request_stop(self, worker_id: str, grace_period_s: float) -> None:
        import ray

        record = self.registry.get(worker_id)
        if record.final or record.handle is None:
            return
        if record.status == "scheduling":
            self.registry.finish(worker_id, "stopped", "stopped by user before it started")
            with contextlib.suppress(Exception):
                ray.kill(record.handle, no_restart=True)
            return
        record.handle.stop.remote(grace_period_s, "stopped", "stopped by user")

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
        self._kill_queues()
        self.head.close()

    def _kill_queues(self) -> None:
        import ray

        for handle in self._queues.values():
            with contextlib.suppress(Exception):
                ray.kill(handle)
        self._queues.clear()

    def _check_open(self) -> None:
        if self._closed:
            raise SessionError("this session has been shut down")


def _relative(arg: str, project_dir: str) -> str:
    """A path inside the project dir made relative to it; anything else unchanged."""
    if os.path.isabs(arg) and arg.startswith(project_dir + os.sep):
        return os.path.relpath(arg, project_dir)
    return arg


def _on_this_node() -> dict[str, Any]:
    """Actor options that pin an actor to the session's own node.

    A queue lives with the session: a worker node that dies must not take
    the queue's state with it.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    try:
        node_id = ray.get_runtime_context().get_node_id()
    except Exception:  # a Ray Client session has no node of its own
        return {}
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)}


_lock = threading.RLock()
_current: Session | None = None


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
) -> Session:
    """Start this process's session (see ``cmlray.init``)."""
    global _current
    with _lock:
        if _current is not None:
            raise SessionError("a cmlray session is already running: call cmlray.shutdown() first")
        shipped = (runtime_env or {}).get("working_dir")
        project = os.path.abspath(shipped or project_dir or os.getcwd())
        if not os.path.isdir(project):
            raise ValueError(f"project_dir must be an existing directory, got {project_dir!r}")
        head = _connect(address, num_cpus, num_gpus, resources, runtime_env)
        _current = Session(head, project, console, log_dir)
        _current.ships_project = bool(shipped)
        # After ray.init, so this runs before Ray's own exit hook (atexit is LIFO).
        atexit.unregister(_at_exit)
        atexit.register(_at_exit)
        return _current


def _connect(
    address: str | None,
    num_cpus: int | None,
    num_gpus: int | None,
    resources: dict[str, float] | None,
    runtime_env: dict[str, Any] | None = None,
) -> _head.Head:
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is not None:
        return _head.attach(address, runtime_env)
    if ray.is_initialized():  # the user connected Ray themselves: use that connection
        return _head.Head(address=None, owns_head=False, disconnect=False)
    return _head.start_own_head(
        num_cpus=num_cpus, num_gpus=num_gpus, resources=resources, runtime_env=runtime_env
    )


def current(create: bool = True) -> Session | None:
    """The running session; started with defaults if there is none and ``create``."""
    with _lock:
        if _current is None and create:
            return start()
        return _current


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
    if session is not None:
        session.close()


def _at_exit() -> None:
    try:
        shutdown()
    except Exception as exc:  # never let a failed cleanup hide the real exit status
        print(f"cmlray: cleanup at exit failed: {exc}", file=sys.stderr)
