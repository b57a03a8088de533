"""This process's one session: ``cmlray.init``, ``cmlray.shutdown``, and the session in between.

A session starts lazily with the first API call (or explicitly with
``init``), in the background with ``init(block=False)`` (``_boot.py``), and
ends with ``shutdown()`` or when the process exits (an ``atexit`` hook, and
for the paths that skip it, each guard and the head's reaper). This module
is the only place that holds it.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console

from cmlray import _head
from cmlray._boot import Boot
from cmlray._checks import check_flag
from cmlray._config import AGENT_IDLE_S, SessionConfig
from cmlray._session import Session
from cmlray.errors import SessionError

_lock = threading.RLock()
_current: Session | Boot[Session] | None = None


def init(
    address: str | None = None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    resources: Mapping[str, float] | None = None,
    project_dir: str | None = None,
    *,
    console: Console | None = None,
    log_dir: str | os.PathLike[str] | None = None,
    runtime_env: Mapping[str, Any] | None = None,
    ship_project: bool = True,
    project_excludes: Sequence[str] = (),
    block: bool = True,
    head_services: str = "minimal",
    agent_idle_s: float = AGENT_IDLE_S,
    node_types: Mapping[str, Any] | str | None = None,
) -> None:
    """Start this process's cmlray session explicitly.

    The first API call starts one with defaults; call ``init`` first to choose.

    Args:
        address: a Ray cluster to attach to (``"host:port"`` of its GCS,
            from a machine that is a node of it); default ``RAY_ADDRESS`` if
            set, else a Ray head of the session's own (token auth on, no
            dashboard). Ray Client addresses (``ray://``) are refused: see
            the README's "Scaling out".
        num_cpus: CPUs the own head offers (default: the machine's cores).
        num_gpus: GPUs the own head offers (default: those detected).
        resources: custom resources the own head offers.
        project_dir: the workers' working directory and the base of relative
            script paths (default: the current directory).
        console: where workers' output is shown (default: Rich's console).
        log_dir: keep every worker's full output in ``<log_dir>/<name>-<id>.log``.
        runtime_env: a Ray runtime environment for the session's job. With a
            ``working_dir`` (usually the project dir), Ray ships that directory
            to every node (512 MiB at most; ``excludes`` trims it) and workers
            run in their node's copy: the way to use files on a remote cluster.
            An attached session does this by default (see ``ship_project``).
            Its ``env_vars`` reach every worker's program (a worker's own
            ``env`` wins).
        ship_project: attached to a cluster, ship the project dir to every
            node (as CML mounts the project in every engine), without
            ``.git``, virtualenvs, caches and what ``.gitignore`` or
            ``.rayignore`` list; workers run in their node's copy. False
            where the nodes share the session's filesystem. Ignored with an
            own head, whose workers run in the project dir itself.
        project_excludes: more gitignore-style patterns to leave behind.
        block: wait until the session is up (the default). False returns at
            once while the head boots in the background: the first call that
            needs the session waits for it, and raises if it could not start.
        head_services: ``"minimal"`` (the default) starts an own head without
            the Ray services cmlray does not use: the autoscaler monitor, the
            log monitor and the API server behind Ray's state API and job
            submission (a faster start and end, ~250 MiB less memory).
            ``"all"`` starts them as ``ray.init`` does. Ignored when attached.
        agent_idle_s: a node's agent with no worker for this long ends, so
            that nothing of cmlray keeps an idle node from being scaled down
            (the session's own node's stays); the next worker there starts
            a new one (about a second).
        node_types: on an autoscaling cluster, the node types the autoscaler
            may add, as in Ray's cluster config (``{"cpu2": {"resources":
            {"CPU": 2, "memory": 4294967296}, "max_workers": 2}}``), JSON, or
            the path of a ``ray up`` cluster config; default
            ``CMLRAY_NODE_TYPES``. A request no alive node and no node type can
            hold is refused at once; without them, on a cluster whose
            autoscaler does not say, such workers wait and say why.

    Raises:
        SessionError: a session is already running, or Ray could not start.
    """
    config = SessionConfig.build(
        address,
        num_cpus,
        num_gpus,
        resources,
        project_dir,
        console=console,
        log_dir=log_dir,
        runtime_env=runtime_env,
        ship_project=ship_project,
        project_excludes=project_excludes,
        head_services=head_services,
        agent_idle_s=agent_idle_s,
        node_types=node_types,
    )
    start(config, block=check_flag("block", block))


def start(config: SessionConfig, *, block: bool = True) -> Session | None:
    """Start this process's session from ``config``; None when not ``block``."""
    global _current
    with _lock:
        if _current is not None:
            raise SessionError("a cmlray session is already running: call cmlray.shutdown() first")

        def open_session(boot: Boot[Session] | None = None) -> Session:
            head = _head.connect(config)
            try:
                session = Session(config, head, boot.release if boot is not None else _nothing)
            except BaseException:
                head.close()
                raise
            # After ray.init, so this runs before Ray's own exit hook (atexit is LIFO).
            atexit.unregister(_at_exit)
            atexit.register(_at_exit)
            return session

        if not block:
            _current = Boot(open_session, config.project_dir)
            return None
        _current = open_session()
        return _current


def _nothing() -> None:
    return None


def current(create: bool = True) -> Session | None:
    """The running session; started with defaults if there is none and ``create``.

    A session still booting (``init(block=False)``) is waited for.
    """
    global _current
    with _lock:
        if _current is None and create:
            return start(SessionConfig.build())
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


def require() -> Session:
    """The running session, started with defaults if there is none."""
    session = current(create=True)
    assert session is not None
    return session


def project_dir() -> str:
    """The running session's project dir, or the one a session started now would get."""
    with _lock:
        return _current.project_dir if _current is not None else os.path.abspath(os.getcwd())


def shutdown() -> None:
    """End the session: stop its workers; end its own Ray head, if any.

    On an attached cluster only this session's workers end. Safe to call
    when no session runs.
    """
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
