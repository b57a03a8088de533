"""An Executor's functions, pickled once in the session and loaded once in each worker.

Each call of :class:`cmlray.Executor` is a queue item, ``(key, fn, args,
kwargs)`` pickled alone. A function pickled by value (defined in a notebook
or ``__main__``, a lambda, a closure) carries the globals it uses, and was
pickled in the session and unpickled in the worker with every call: 32 us
and 14 us of a ``functools.partial`` of such a function, measured here (the
calls of ``benchmarks/executor_calls.py``); a function using a 20 MB array
travelled and was unpickled 200 times for 200 calls (60 s on this machine,
where a small lambda's 200 calls take 0.07 s, and the workers' memory grew
with every batch of calls they held).

So the session pickles each function once (``FunctionShelf.form``). A
small one travels with each call as its pickle (``Inline``: 4.5 us to pickle
with the call), which a worker loads once for all the calls that carry the
same bytes (1.7 us a call). One whose pickle passes ``SHIP_ONCE_BYTES`` is
*attached* to the executor's queue (kept by the agent that hosts it,
``QueueServer.attach``) and the calls carry a ``Shipped`` key in its place:
a worker fetches it the first time a call names it (``resolve``: one
request to its node agent) and keeps it. Either way the globals a function
uses are taken as they are at its first call, as Ray's remote functions
take theirs: a function changed afterwards is pickled again when it is a
new function object (``def`` run again), not when a global it reads is
rebound. The same holds for a ``functools.partial`` of a function whose
arguments are plain values; other callables (bound methods, objects with
``__call__``, partials holding objects that may change) are pickled with
each call, as they are when it is made.

Standard library only at import: the worker's side runs in every program
``cmlray._calls`` serves.
"""

from __future__ import annotations

import functools
import itertools
import os
import pickle
import types
import weakref
from collections.abc import Callable
from typing import Any

from cmlray import _pickling

SHIP_ONCE_BYTES = 64 << 10  # a Ray call's argument inlines up to 100 KiB; past this, attach
QUEUE_ENV = "CMLRAY_CALLS_QUEUE"
LOADED_MAX = 256  # a worker keeps this many inline functions loaded (then starts over)


class _Stand:
    """What a call carries in place of its function; a worker finds it with ``resolve``."""

    __slots__ = ()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the function (in a worker): a joblib batch calls this as the function."""
        return resolve(self)(*args, **kwargs)


class Shipped(_Stand):
    """A function attached to the executor's queue under ``key``."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key

    def __reduce__(self) -> tuple[Any, ...]:
        return (Shipped, (self.key,))

    def __repr__(self) -> str:
        return f"Shipped({self.key!r})"


class Inline(_Stand):
    """A small function's pickle, made once in the session."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce__(self) -> tuple[Any, ...]:
        return (Inline, (self.data,))

    def __repr__(self) -> str:
        return f"Inline({len(self.data)} bytes)"


class FunctionShelf:
    """The session's side: each function pickled once, the big ones attached.

    Two threads submitting the same new function at once may both ship it,
    under two keys: harmless, and rarer than a lock's cost on every call.
    """

    def __init__(self, attach: Callable[[str, bytes], None]) -> None:
        self._attach = attach
        self._forms: weakref.WeakKeyDictionary[Any, Shipped | Inline] = weakref.WeakKeyDictionary()
        self._numbers = itertools.count(1)  # (next() is atomic: keys stay unique across threads)

    def form(self, fn: Any) -> Any:
        """``fn`` as calls carry it: its pickle, its ``Shipped`` key, or itself.

        Raises TypeError when ``fn`` cannot be pickled (at submit, not later).
        """
        if not _pickled_once(fn):  # (bound methods, callables: pickled with each call)
            return fn
        known = self._forms.get(fn)
        if known is None:
            known = self._forms[fn] = self._ship(fn)
        return known

    def forms(self, fns: list[Any]) -> list[Any]:
        """``form`` of each (a map's or a batch's calls share a function: asked once)."""
        known: dict[int, Any] = {}
        for fn in fns:
            if id(fn) not in known:
                known[id(fn)] = self.form(fn)
        return [known[id(fn)] for fn in fns]

    def _ship(self, fn: Any) -> Shipped | Inline:
        try:
            data = _pickling.Dumper()(fn)
        except Exception as exc:
            why = f"{type(exc).__name__}: {exc}"
            raise TypeError(f"the call's function cannot be pickled ({why})") from exc
        if len(data) <= SHIP_ONCE_BYTES:
            return Inline(data)
        shipped = Shipped(f"fn-{next(self._numbers)}")
        self._attach(shipped.key, data)
        return shipped


def _pickled_once(fn: Any) -> bool:
    """Whether ``fn``'s pickle can stand for it in every call: a function, or a partial of one
    whose arguments are plain values."""
    if isinstance(fn, types.FunctionType):
        return True
    if type(fn) is not functools.partial or not isinstance(fn.func, types.FunctionType):
        return False
    return _pickling.all_plain((*fn.args, *fn.keywords.values()))


_resolved: dict[str, Any] = {}  # the worker's side: attached functions, once loaded
_loaded: dict[bytes, Any] = {}  # and inline ones, by their pickle


def resolve(fn: Any) -> Any:
    """The function a call names: ``fn`` itself, or the one its ``Inline`` or ``Shipped`` names.

    Loading an ``Inline`` function may raise (a module the worker cannot
    import): that is the call's exception.
    """
    kind = type(fn)
    if kind is Inline:
        found = _loaded.get(fn.data)
        if found is None:
            if len(_loaded) >= LOADED_MAX:
                _loaded.clear()
            found = _loaded[fn.data] = pickle.loads(fn.data)
        return found
    if kind is not Shipped:
        return fn
    found = _resolved.get(fn.key)
    if found is None:
        from cmlray._exchanges import client

        data = client().request("attachment", os.environ[QUEUE_ENV], fn.key)
        found = _resolved[fn.key] = pickle.loads(data)
    return found
