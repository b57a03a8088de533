"""A worker's side of :class:`cmlray.Executor`: calls taken off a queue, outcomes sent back.

Each queue item is a call, ``(key, fn, args, kwargs)``, cloudpickled by the
session (``fn`` may be the key of a function shipped once: ``_shipfn.py``).
The item's *result* is an envelope, ``(key, True, value)`` or
``(key, False, exception, traceback text)``: an exception raised by ``fn``
is the call's outcome, delivered to its future, not a failure of the item,
so the queue does not retry it (it retries items whose worker died).

The worker's program is ``python -c "from cmlray._calls import main; main()"``
with the queue's name in ``CMLRAY_CALLS_QUEUE``; it imports nothing of the
session's side (no Ray).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from cmlray._shipfn import QUEUE_ENV, resolve

PROGRAM = "from cmlray._calls import main; main()"

Call = tuple[int, Any, tuple[Any, ...], dict[str, Any]]


def run_call(call: Call) -> tuple[Any, ...]:
    """Run one call; its envelope (the exception, when raised, picklable or described)."""
    key, fn, args, kwargs = call
    try:
        return (key, True, resolve(fn)(*args, **kwargs))
    except Exception as exc:
        import traceback

        text = "".join(traceback.format_exception(exc))
        return (key, False, _portable(exc), text)


def apply_chunk(fn: Any, chunk: list[tuple[Any, ...]]) -> list[Any]:
    """Calls of ``Executor.map`` with a ``chunksize``: one item, ``fn`` over each args tuple."""
    fn = resolve(fn)
    return [fn(*args) for args in chunk]


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a RuntimeError that describes it."""
    import cloudpickle

    try:
        cloudpickle.loads(cloudpickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc} (the exception could not be pickled)")
    return exc


def main() -> int:
    """Serve the calls of the queue named in ``CMLRAY_CALLS_QUEUE`` until it is drained."""
    import cmlray.worker

    name = os.environ.get(QUEUE_ENV)
    if not name:
        print(f"cmlray._calls: {QUEUE_ENV} is not set", file=sys.stderr)
        return 2
    cmlray.worker.serve(name, run_call)
    return 0
