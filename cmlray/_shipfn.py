"""An Executor's big functions, shipped to its workers once instead of with every call.

Each call of :class:`cmlray.Executor` is a queue item, ``(key, fn, args,
kwargs)`` pickled alone. A function pickled by value (defined in a notebook
or ``__main__``, a lambda, a closure) carries the globals it uses: a
function using a 20 MB array travelled and was unpickled 200 times for 200
calls (60 s on this machine, where a small lambda's 200 calls take 0.07 s,
and the workers' memory grew with every batch of calls they held).

So the session pickles each function once (``FunctionShelf.form``); one whose
pickle passes ``SHIP_ONCE_BYTES`` is *attached* to the executor's queue (kept
by the agent that hosts it, ``QueueServer.attach``) and the calls carry a
``Shipped`` key in its place. A worker fetches an attached function the
first time a call names it (``resolve``: one request to its node agent) and
keeps it. The globals such a function uses are taken as they are at its
first call, as Ray's remote functions take theirs: a function changed
afterwards is shipped again when it is a new function object (``def`` run
again), not when a global it reads is rebound. Smaller functions (and
whatever pickles by reference: functions of installed modules, builtins)
travel with each call, as before: their pickle costs less than a round trip.

Standard library only at import: the worker's side runs in every program
``cmlray._calls`` serves.
"""

from __future__ import annotations

import itertools
import os
import pickle
import types
import weakref
from collections.abc import Callable
from typing import Any

SHIP_ONCE_BYTES = 64 << 10  # a Ray call's argument inlines up to 100 KiB; past this, attach
QUEUE_ENV = "CMLRAY_CALLS_QUEUE"


class Shipped:
    """A function attached to the executor's queue under ``key``, in place of itself in calls."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key

    def __reduce__(self) -> tuple[Any, ...]:
        return (Shipped, (self.key,))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the function (in a worker): a joblib batch calls the key as the function."""
        return resolve(self)(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Shipped({self.key!r})"


class FunctionShelf:
    """The session's side: each function pickled once, the big ones attached.

    Two threads submitting the same new function at once may both ship it,
    under two keys: harmless, and rarer than a lock's cost on every call.
    """

    def __init__(self, attach: Callable[[str, bytes], None]) -> None:
        self._attach = attach
        self._forms: weakref.WeakKeyDictionary[Any, Shipped | None] = weakref.WeakKeyDictionary()
        self._numbers = itertools.count(1)  # (next() is atomic: keys stay unique across threads)

    def form(self, fn: Any) -> Any:
        """``fn`` as calls carry it: itself, or its ``Shipped`` key once attached.

        Raises TypeError when ``fn`` cannot be pickled (at submit, not later).
        """
        if not isinstance(fn, types.FunctionType):  # (bound methods, partials, callables: inline)
            return fn
        known = self._forms.get(fn, False)
        if known is False:
            known = self._ship(fn)
        return fn if known is None else known

    def forms(self, fns: list[Any]) -> list[Any]:
        """``form`` of each (a map's or a batch's calls share a function: asked once)."""
        known: dict[int, Any] = {}
        for fn in fns:
            if id(fn) not in known:
                known[id(fn)] = self.form(fn)
        return [known[id(fn)] for fn in fns]

    def _ship(self, fn: Any) -> Shipped | None:
        from cmlray import _pickling

        try:
            data = _pickling.Dumper()(fn)
        except Exception as exc:
            why = f"{type(exc).__name__}: {exc}"
            raise TypeError(f"the call's function cannot be pickled ({why})") from exc
        shipped = None
        if len(data) > SHIP_ONCE_BYTES:
            shipped = Shipped(f"fn-{next(self._numbers)}")
            self._attach(shipped.key, data)
        self._forms[fn] = shipped
        return shipped


_resolved: dict[str, Any] = {}  # the worker's side: attached functions, once loaded


def resolve(fn: Any) -> Any:
    """The function a call names: ``fn`` itself, or the attached one a ``Shipped`` key names."""
    if type(fn) is not Shipped:
        return fn
    found = _resolved.get(fn.key)
    if found is None:
        from cmlray._exchanges import client

        data = client().request("attachment", os.environ[QUEUE_ENV], fn.key)
        found = _resolved[fn.key] = pickle.loads(data)
    return found
