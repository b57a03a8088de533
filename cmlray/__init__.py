"""cmlray: Cloudera ML's Workers API for any Python session, on Ray.

``import cmlray as cdsw`` runs code written for CML's ``cdsw`` module::

    import cmlray as cdsw

    workers = cdsw.launch_workers(n=2, cpu=0.5, memory=0.5, code="print('hi')")
    cdsw.await_workers(workers)
"""

from __future__ import annotations

from cmlray._api import StopResult, await_workers, launch_workers, list_workers, stop_workers
from cmlray._init import init, shutdown
from cmlray.errors import (
    CmlrayError,
    InfeasibleRequestError,
    QueueError,
    SessionError,
    WorkerError,
)
from cmlray.queue import Queue, QueueResult

__version__ = "0.1.0"

__all__ = [
    "CmlrayError",
    "InfeasibleRequestError",
    "Queue",
    "QueueError",
    "QueueResult",
    "SessionError",
    "StopResult",
    "WorkerError",
    "__version__",
    "await_workers",
    "init",
    "launch_workers",
    "list_workers",
    "shutdown",
    "stop_workers",
]
