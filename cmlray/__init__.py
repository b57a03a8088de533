"""cmlray: Cloudera ML's Workers API for any Python session, on Ray.

``import cmlray as cdsw`` runs code written for CML's ``cdsw`` module::

    import cmlray as cdsw

    workers = cdsw.launch_workers(n=2, cpu=0.5, memory=0.5, code="print('hi')")
    cdsw.await_workers(workers)

The public names below are imported on first use: a worker's actor and a
worker's program import ``cmlray._actor`` or ``cmlray.worker`` without
paying for the session side (Rich, the relay, the API).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_PUBLIC = {
    "launch_workers": "cmlray._api",
    "list_workers": "cmlray._api",
    "stop_workers": "cmlray._api",
    "await_workers": "cmlray._api",
    "StopResult": "cmlray._api",
    "watch": "cmlray._watch",
    "logs": "cmlray._logread",
    "init": "cmlray._init",
    "shutdown": "cmlray._init",
    "Queue": "cmlray.queue",
    "QueueResult": "cmlray.queue",
    "CmlrayError": "cmlray.errors",
    "InfeasibleRequestError": "cmlray.errors",
    "QueueError": "cmlray.errors",
    "SessionError": "cmlray.errors",
    "WorkerError": "cmlray.errors",
}

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
    "logs",
    "shutdown",
    "stop_workers",
    "watch",
]

if TYPE_CHECKING:
    from cmlray._api import StopResult, await_workers, launch_workers, list_workers, stop_workers
    from cmlray._init import init, shutdown
    from cmlray._logread import logs
    from cmlray._watch import watch
    from cmlray.errors import (
        CmlrayError,
        InfeasibleRequestError,
        QueueError,
        SessionError,
        WorkerError,
    )
    from cmlray.queue import Queue, QueueResult


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'cmlray' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
