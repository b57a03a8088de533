"""cmlray: Cloudera ML's Workers API for any Python session, on Ray.

``import cmlray as cdsw`` runs code written for CML's ``cdsw`` module::

    import cmlray as cdsw

    workers = cdsw.launch_workers(n=2, cpu=0.5, memory=0.5, code="print('hi')")
    cdsw.await_workers(workers)

The public surface is the table ``_PUBLIC`` below, once: ``__all__`` is
derived from it, the type checker reads the same names from the
``TYPE_CHECKING`` block, and ``tests/unit/test_public_api.py`` pins the
names and checks the three agree. Names are imported on first use: a
worker's program imports ``cmlray.worker`` without paying for the session
side (Ray, Rich, the relay), and the standard-library-only programs
(``_standalone.py``) import this package without importing anything else.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # (a worker's program imports this package: see _channel.py)

__version__ = "0.1.0"

# name -> the module that defines it
_PUBLIC = {
    "launch_workers": "cmlray._api",
    "list_workers": "cmlray._api",
    "stop_workers": "cmlray._api",
    "await_workers": "cmlray._api",
    "StopResult": "cmlray._api",
    "watch": "cmlray._watch",
    "logs": "cmlray._logread",
    "init": "cmlray._lifecycle",
    "shutdown": "cmlray._lifecycle",
    "Executor": "cmlray._executor",
    "Queue": "cmlray.queue",
    "QueueResult": "cmlray.queue",
    "CmlrayError": "cmlray.errors",
    "InfeasibleRequestError": "cmlray.errors",
    "QueueError": "cmlray.errors",
    "SessionError": "cmlray.errors",
    "WorkerError": "cmlray.errors",
}

__all__ = [*_PUBLIC, "__version__"]  # noqa: PLE0604 - pinned by tests/unit/test_public_api.py

if TYPE_CHECKING:  # the same names, for type checkers ("X as X": re-exported)
    from cmlray._api import StopResult as StopResult
    from cmlray._api import await_workers as await_workers
    from cmlray._api import launch_workers as launch_workers
    from cmlray._api import list_workers as list_workers
    from cmlray._api import stop_workers as stop_workers
    from cmlray._executor import Executor as Executor
    from cmlray._lifecycle import init as init
    from cmlray._lifecycle import shutdown as shutdown
    from cmlray._logread import logs as logs
    from cmlray._watch import watch as watch
    from cmlray.errors import CmlrayError as CmlrayError
    from cmlray.errors import InfeasibleRequestError as InfeasibleRequestError
    from cmlray.errors import QueueError as QueueError
    from cmlray.errors import SessionError as SessionError
    from cmlray.errors import WorkerError as WorkerError
    from cmlray.queue import Queue as Queue
    from cmlray.queue import QueueResult as QueueResult


def __getattr__(name: str) -> object:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'cmlray' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
