"""``cmlray.init`` and ``cmlray.shutdown``: the session's explicit start and end."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console

from cmlray import _headservices, _session
from cmlray._spec import check_count


def _check_resources(resources: object) -> dict[str, float] | None:
    if resources is None:
        return None
    if not isinstance(resources, Mapping):
        raise TypeError(f"resources must be a dict of name to amount, got {resources!r}")
    checked = {}
    for key, value in resources.items():
        if (
            not isinstance(key, str)
            or isinstance(value, bool)
            or not isinstance(value, int | float)
        ):
            raise TypeError(f"resources must map str names to numbers, got {key!r}: {value!r}")
        if value < 0:
            raise ValueError(f"resources[{key!r}] must be >= 0, got {value!r}")
        checked[key] = float(value)
    return checked


def _check_runtime_env(runtime_env: object) -> dict[str, Any] | None:
    if runtime_env is None:
        return None
    if not isinstance(runtime_env, Mapping):
        raise TypeError(f"runtime_env must be a dict (Ray's runtime_env), got {runtime_env!r}")
    env = dict(runtime_env)
    working_dir = env.get("working_dir")
    if working_dir is not None:
        if not isinstance(working_dir, str) or not os.path.isdir(working_dir):
            raise ValueError(
                f"runtime_env['working_dir'] must be an existing directory, got {working_dir!r}"
            )
        env["working_dir"] = os.path.abspath(working_dir)
    return env


def _check_log_dir(log_dir: object) -> str | None:
    if log_dir is None:
        return None
    if not isinstance(log_dir, str | os.PathLike):
        raise TypeError(f"log_dir must be a directory path, got {log_dir!r}")
    path = os.path.abspath(os.fspath(log_dir))
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"log_dir must be a directory, and {path} is a file")
    return path


def _check_flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def _check_patterns(patterns: object) -> tuple[str, ...]:
    if isinstance(patterns, str) or not isinstance(patterns, Sequence):
        raise TypeError(f"project_excludes must be a list of patterns, got {patterns!r}")
    if not all(isinstance(p, str) and p.strip() for p in patterns):
        raise TypeError(f"project_excludes must hold non-empty strings, got {patterns!r}")
    return tuple(patterns)


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
) -> None:
    """Start this process's cmlray session explicitly.

    The first API call starts one with defaults; call ``init`` first to choose.

    Args:
        address: a Ray cluster to attach to (``"ray://..."`` or
            ``"host:port"``); default ``RAY_ADDRESS`` if set, else a Ray head
            of the session's own (token auth on, no dashboard).
        num_cpus: CPUs the own head offers (default: the machine's cores).
        num_gpus: GPUs the own head offers (default: those detected).
        resources: custom resources the own head offers.
        project_dir: the workers' working directory and the base of relative
            script paths (default: the current directory).
        console: where workers' output is shown (default: Rich's console).
        log_dir: keep every worker's full output in ``<log_dir>/<name>-<id>.log``.
        runtime_env: a Ray runtime environment for the workers' actors. With a
            ``working_dir`` (usually the project dir), Ray ships that directory
            to every node (512 MiB at most; ``excludes`` trims it) and workers
            run in their node's copy: the way to use files on a remote cluster.
            An attached session does this by default (see ``ship_project``).
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

    Raises:
        SessionError: a session is already running, or Ray could not start.
    """
    if address is not None and not isinstance(address, str):
        raise TypeError(f"address must be a string such as 'host:6379', got {address!r}")
    if num_cpus is not None:
        num_cpus = check_count("num_cpus", num_cpus, 0)
    if num_gpus is not None:
        num_gpus = check_count("num_gpus", num_gpus, 0)
    _session.start(
        address=address,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        resources=_check_resources(resources),
        project_dir=project_dir,
        console=console,
        log_dir=_check_log_dir(log_dir),
        runtime_env=_check_runtime_env(runtime_env),
        ship_project=_check_flag("ship_project", ship_project),
        project_excludes=_check_patterns(project_excludes),
        block=_check_flag("block", block),
        head_services=_headservices.check(head_services),
    )


def shutdown() -> None:
    """End the session: stop its workers; end its own Ray head, if any.

    On an attached cluster only this session's workers end. Safe to call
    when no session runs.
    """
    _session.shutdown()
