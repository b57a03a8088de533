"""``cmlray.logs()``: a worker's whole output, running or ended.

The event pump feeds every line to the session's :class:`cmlray._logs.WorkerLogs`
(whether or not ``log_dir`` was given), so the whole output is there to read
while the worker runs and after it ended, until the session ends.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cmlray import _lifecycle, _refs
from cmlray._checks import check_choice, check_lines
from cmlray._logs import STREAMS


def logs(worker: Any, stream: str = "all", tail: int | None = None) -> str:
    """A worker's whole output so far, whether it still runs or has ended.

    Kept for every worker of the session without ``log_dir`` (in memory,
    past 1 MiB in a file of the session's temp dir, removed when the session
    ends). Lines end with a newline; progress-bar states are left out; the
    text is as the program wrote it (escape sequences included).

    Args:
        worker: a worker id, a worker dict, or a worker's name (``_refs.py``).
        stream: ``"all"`` (stdout and stderr as they arrived), ``"out"`` or ``"err"``.
        tail: only the last ``tail`` lines; None: every line.

    Raises:
        ValueError: a worker this session never launched, or a bad ``stream``
            or ``tail``. TypeError: arguments of the wrong type.
    """
    stream = check_choice("stream", stream, STREAMS)
    tail = check_lines("tail", tail)
    if not isinstance(worker, str | Mapping):
        raise TypeError(f"worker must be one worker id, name or dict, got {worker!r}")
    session = _lifecycle.current(create=False)
    (worker_id,) = _refs.known_ids(session.registry if session else None, worker, "worker")
    assert session is not None  # known_ids found the worker in it
    return session.logs.read(worker_id, stream, tail)
