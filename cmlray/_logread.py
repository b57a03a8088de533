"""``cmlray.logs()``: a worker's whole output, running or ended, and worker look-up.

The event pump feeds every line to the session's :class:`cmlray._logs.WorkerLogs`
(whether or not ``log_dir`` was given), so the whole output is there to read
while the worker runs and after it ended, until the session ends.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from cmlray._logs import STREAMS

if TYPE_CHECKING:
    from cmlray._session import Session


def _one_id(session: Session | None, value: object, argument: str) -> str:
    """A worker id from an id, a worker dict or a worker name."""
    if isinstance(value, Mapping):
        value = value.get("id")
    if not isinstance(value, str):
        raise TypeError(f"{argument} must be worker ids, names or worker dicts, got {value!r}")
    if session is not None:
        if value in session.registry:
            return value
        named = [d["id"] for d in session.registry.describe() if d["name"] == value]
        if len(named) == 1:
            return str(named[0])
        if len(named) > 1:
            raise ValueError(f"{argument}: {len(named)} workers are named {value!r}: give an id")
    raise ValueError(f"{argument}: this session launched no worker {value!r}")


def resolve_ids(session: Session | None, workers: object, argument: str) -> list[str]:
    """Ids for an id, name or worker dict, or an iterable of them (unknown: ValueError)."""
    if isinstance(workers, str | Mapping):
        workers = [workers]
    if not isinstance(workers, Iterable):
        raise TypeError(
            f"{argument} must be a worker id, name or dict, or a list of them, got {workers!r}"
        )
    return list(dict.fromkeys(_one_id(session, value, argument) for value in workers))


def _check_stream(stream: object) -> str:
    if stream not in STREAMS:
        raise ValueError(f"stream must be one of 'all', 'out', 'err', got {stream!r}")
    return str(stream)


def _check_tail(tail: object) -> int | None:
    if tail is None:
        return None
    if isinstance(tail, bool) or not isinstance(tail, int):
        raise TypeError(f"tail must be a whole number of lines or None, got {tail!r}")
    if tail < 0:
        raise ValueError(f"tail must be >= 0 lines, got {tail!r}")
    return tail


def logs(worker: Any, stream: str = "all", tail: int | None = None) -> str:
    """A worker's whole output so far, whether it still runs or has ended.

    Kept for every worker of the session without ``log_dir`` (in memory,
    past 1 MiB in a file of the session's temp dir, removed when the session
    ends). Lines end with a newline; progress-bar states are left out; the
    text is as the program wrote it (escape sequences included).

    Args:
        worker: a worker id, a worker dict, or a worker's name.
        stream: ``"all"`` (stdout and stderr as they arrived), ``"out"`` or ``"err"``.
        tail: only the last ``tail`` lines; None: every line.

    Raises:
        ValueError: a worker this session never launched, or a bad ``stream``
            or ``tail``. TypeError: arguments of the wrong type.
    """
    from cmlray import _session

    stream = _check_stream(stream)
    tail = _check_tail(tail)
    if not isinstance(worker, str | Mapping):
        raise TypeError(f"worker must be one worker id, name or dict, got {worker!r}")
    session = _session.current(create=False)
    worker_id = _one_id(session, worker, "worker")
    assert session is not None  # _one_id found the worker in it
    return session.logs.read(worker_id, stream, tail)
