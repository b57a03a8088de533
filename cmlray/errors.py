"""Exceptions raised by cmlray.

Bad arguments raise the built-in ``TypeError`` or ``ValueError`` (as CML
callers expect), naming the argument and what was expected. Everything
cmlray raises beyond those derives from :class:`CmlrayError`::

    Exception
    +-- CmlrayError                     anything cmlray itself reports
    |   +-- SessionError                the Ray session could not start or is gone
    |   +-- WorkerError                 a worker could not be started or controlled
    |   +-- QueueError                  a queue is closed, unknown, or unreachable
    +-- ValueError
        +-- InfeasibleRequestError      no node of the cluster could ever hold the request
            (also a CmlrayError)

Errors coming from Ray are translated at one boundary, by type
(``cmlray/_rayerrors.py``), and chained with ``raise ... from exc`` so the
original stays visible.
"""

from __future__ import annotations

__all__ = [
    "CmlrayError",
    "InfeasibleRequestError",
    "QueueError",
    "SessionError",
    "WorkerError",
]


class CmlrayError(Exception):
    """Base class of the errors cmlray raises (besides TypeError/ValueError)."""


class SessionError(CmlrayError):
    """The session's Ray head could not be started, attached to, or reached."""


class WorkerError(CmlrayError):
    """A worker could not be started or controlled.

    Attributes:
        worker_id: the worker concerned, when there is one.
    """

    def __init__(self, message: str, *, worker_id: str | None = None) -> None:
        super().__init__(f"worker {worker_id}: {message}" if worker_id else message)
        self.worker_id = worker_id


class QueueError(CmlrayError):
    """A queue operation failed: put after close, an unknown queue name, ..."""


class InfeasibleRequestError(CmlrayError, ValueError):
    """A launch asked for more than the largest node of the cluster has.

    Ray would leave such a request pending forever; cmlray refuses it at once.
    """
