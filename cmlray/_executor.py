"""``cmlray.Executor``: ``concurrent.futures`` on cmlray workers and a queue.

Built on what already serves users, not a second execution path: each call
is an item of a :class:`~cmlray.queue.Queue` (so leases, retries after a
worker's death, batching and the relay serve it), served by ``max_workers``
workers launched with their CPU / memory / GPU reservations (so
``list_workers``, ``watch`` and the CLI table show them) running
``cmlray/_calls.py``. ``submit`` pickles the call and returns; a sender
thread puts what was submitted meanwhile on the queue in one round trip (so
a loop of ``submit`` costs microseconds a call, not a round trip each), and
a collector thread reads results as they finish and settles the futures.
Until the first call has come back (the workers are starting), each
``submit`` yields the GIL once and the sender waits for a pause in the
submits (at most ``GATHER_MAX_S``) before it sends: a loop of submits held
the GIL against the launch's steps on the event pump's thread and Ray's
(each waiting out Python's 5 ms switch interval), and the sender, woken
by each yield, would send a put for each call, queued at an agent still
starting ahead of its workers' start. Measured in a settled session,
2,000 submits of 5 ms calls (``benchmarks/executor_calls.py``, 5 each,
alternating with the previous build): all results in 5.102 s instead of
5.217 (ProcessPoolExecutor 5.13); right after ``init``, 5.362 and 5.366.

- An exception raised by a call is that call's outcome (its future raises
  it, the traceback text attached as a note): never retried.
- A worker that dies puts the calls it held back on the queue; a call that
  keeps killing workers (``max_attempts`` times) fails its future with
  :class:`~cmlray.errors.WorkerError`. Workers that ended while calls remain
  are replaced; after ``max_workers * max_attempts`` replacements with no
  call finished meanwhile, the executor is broken (its futures raise
  ``BrokenExecutor`` naming why the workers ended).
- ``Future.cancel`` withdraws a call no worker holds yet; one already
  handed to a worker is running and cannot be cancelled (as
  ``ProcessPoolExecutor``).
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from typing import Any

from cmlray import _api, _lifecycle, _pickling
from cmlray._calls import PROGRAM, apply_chunk
from cmlray._checks import check_count, check_text
from cmlray._record import FINAL
from cmlray._shipfn import QUEUE_ENV, FunctionShelf
from cmlray._spec import WorkerSpec
from cmlray.errors import CmlrayError, WorkerError

POLL_S = 0.5  # the collector's longest wait for results before it checks the queue and workers
GATHER_S = 0.005  # until the first call is back, the sender sends once submits pause this long
GATHER_MAX_S = 0.03  # (or after this long)


class _CallFuture(futures.Future[Any]):
    """A future whose ``cancel`` withdraws its call from the queue when no worker holds it."""

    def __init__(self, executor: Executor, key: int) -> None:
        super().__init__()
        self._executor = executor
        self._key = key

    def cancel(self) -> bool:
        if self.done():
            return self.cancelled()
        if self._executor._withdraw([self._key]):
            self._executor._forget(self._key)
            return super().cancel()
        # a worker holds it: it runs (unless marked running already, or settled meanwhile)
        with contextlib.suppress(RuntimeError):
            self.set_running_or_notify_cancel()
        return False


class Executor(futures.Executor):
    """A ``concurrent.futures.Executor`` whose calls run on cmlray workers.

    Args:
        max_workers: workers serving the calls (>= 1).
        cpu: cores each worker holds.
        memory: GiB each worker holds (enforced, as any worker's).
        nvidia_gpu: GPUs each worker holds.
        name: the workers' name prefix (``executor-1``...).
        env: extra environment variables for the workers.
        max_attempts: how often a call is handed to a worker before a call
            that keeps killing its workers fails.

    Workers start with the first call and end when the executor shuts down
    (or with the session). Calls, their arguments and results are
    cloudpickled, so lambdas and closures work. A function whose pickle is
    large (one defined in a notebook that uses a big global) travels to the
    workers once, at its first call, with its globals as they are then
    (``_shipfn.py``).
    """

    def __init__(
        self,
        max_workers: int = 2,
        cpu: float = 1,
        memory: float = 1,
        nvidia_gpu: int = 0,
        *,
        name: str = "executor",
        env: dict[str, str] | None = None,
        max_attempts: int = 3,
    ) -> None:
        self.max_workers = check_count("max_workers", max_workers, 1)
        self.max_attempts = check_count("max_attempts", max_attempts, 1)
        self.name = check_text("name", name)
        self._spec = WorkerSpec.from_call(
            _lifecycle.project_dir(),
            n=1,
            cpu=cpu,
            memory=memory,
            nvidia_gpu=nvidia_gpu,
            kernel="python3",
            script="",
            code=PROGRAM,
            env=env,
            name=name,
            grace_period_s=5.0,
        )  # checks every argument before anything starts
        self._lock = threading.Lock()
        self._keys = itertools.count()
        self._futures: dict[int, _CallFuture] = {}
        self._item_ids: dict[int, int] = {}
        self._outgoing: list[tuple[int, bytes]] = []  # submitted, not on the queue yet
        self._send_lock = threading.Lock()  # one batch on its way at a time
        self._wake = threading.Event()
        self._queue: Any = None
        self._workers: list[str] = []
        self._functions = FunctionShelf(self._attach)
        self._replaced_in_a_row = 0  # workers replaced since a call last finished
        self._names = itertools.count(1)
        self._shutdown = False
        self._collector: threading.Thread | None = None
        self._sender: threading.Thread | None = None
        self._broken: str | None = None
        self._warming = False  # workers starting: no call has come back yet

    # Submitting ------------------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> futures.Future[Any]:
        """Schedule ``fn(*args, **kwargs)``; its future."""
        future: futures.Future[Any] = self._submit_many([(fn, args, kwargs)])[0]
        return future

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        """``fn`` over the iterables' items, results in order (``Executor.map``'s contract).

        ``chunksize`` calls travel as one item (fewer round trips for short
        calls); ``timeout`` counts from this call, as ``Executor.map``'s does.
        """
        chunksize = check_count("chunksize", chunksize, 1)
        deadline = None if timeout is None else time.monotonic() + timeout
        calls = list(zip(*iterables, strict=False))
        if not calls:
            return iter(())
        if chunksize == 1:
            pending = self._submit_many([(fn, args, {}) for args in calls])
        else:
            chunks = [calls[i : i + chunksize] for i in range(0, len(calls), chunksize)]
            form = self._functions.form(fn)  # (TypeError here if it cannot be pickled)
            pending = self._submit_many([(apply_chunk, (form, chunk), {}) for chunk in chunks])
        return _in_order(pending, deadline, chunked=chunksize > 1)

    def _submit_many(
        self, calls: list[tuple[Any, tuple[Any, ...], dict[str, Any]]]
    ) -> list[_CallFuture]:
        keys = [next(self._keys) for _ in calls]
        forms = self._functions.forms([fn for fn, _, _ in calls])
        items = [
            (key, form, args, kwargs)
            for key, form, (_, args, kwargs) in zip(keys, forms, calls, strict=True)
        ]
        payloads = _pickling.dumps_many(items, _unpicklable)  # raises here, not later
        with self._lock:  # (pickled outside it: results settle meanwhile)
            self._check_open()
            self._start()
            made = [_CallFuture(self, key) for key in keys]
            self._futures.update(zip(keys, made, strict=True))
            self._outgoing += zip(keys, payloads, strict=True)
        self._wake.set()
        if self._warming:
            time.sleep(0)  # the GIL for the launch's steps (the pump's loop, Ray's threads)
        return made

    def _attach(self, key: str, data: bytes) -> None:
        """Attach a function to the queue (started with it if this is the first call)."""
        with self._lock:
            self._check_open()
            self._start()
            queue = self._queue
        queue._call("attach", key, data)

    def _check_open(self) -> None:
        """Raise unless calls may be submitted (under the lock)."""
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if self._broken is not None:
            raise futures.BrokenExecutor(self._broken)

    def _send(self) -> None:
        """Put every call submitted so far on the queue, in one round trip."""
        with self._send_lock:
            with self._lock:
                batch, self._outgoing = self._outgoing, []
            if not batch:
                return
            ids = self._queue._put_pickled([payload for _, payload in batch])
            with self._lock:
                for (key, _), item_id in zip(batch, ids, strict=True):
                    if key in self._futures:
                        self._item_ids[key] = item_id

    def _sending(self) -> None:
        """The sender thread: batches of calls onto the queue until shutdown."""
        try:
            while True:
                self._wake.wait()
                if self._warming:
                    self._gather()
                self._wake.clear()
                self._send()
                if self._shutdown and not self._outgoing:
                    return
        except CmlrayError as exc:
            self._break(f"the executor's queue is gone: {exc}")

    def _gather(self) -> None:
        """While the workers start, wait for a pause in the submits: one put for a loop of them.

        A loop of submits yields at each one then, so the sender would wake
        for each and send it alone: put calls queued at the agent ahead of
        the workers' own start. At most ``GATHER_MAX_S``.
        """
        seen, deadline = -1, time.monotonic() + GATHER_MAX_S
        while time.monotonic() < deadline:
            with self._lock:
                count = len(self._outgoing)
            if count == seen:
                return
            seen = count
            time.sleep(GATHER_S)

    def _start(self) -> None:
        """The queue, the workers and the collector, with the first call (under the lock)."""
        if self._queue is not None:
            return
        from cmlray.queue import Queue

        self._queue = Queue(
            f"{self.name}-{uuid.uuid4().hex[:8]}", max_attempts=self.max_attempts, _keep_items=False
        )
        self._warming = True
        self._launch(self.max_workers)
        self._collector = threading.Thread(
            target=self._collect, name=f"cmlray-{self.name}-results", daemon=True
        )
        self._sender = threading.Thread(
            target=self._sending, name=f"cmlray-{self.name}-calls", daemon=True
        )
        self._collector.start()
        self._sender.start()

    def _launch(self, n: int) -> None:
        for _ in range(n):
            (worker,) = _api.launch_workers(
                1, self._spec.cpu, self._spec.memory_gib, self._spec.nvidia_gpu,
                code=PROGRAM, env={**self._spec.env, QUEUE_ENV: self._queue.name},
                name=f"{self.name}-{next(self._names)}",
            )  # fmt: skip
            self._workers.append(worker["id"])

    # Cancelling ------------------------------------------------------------------------

    def _withdraw(self, keys: list[int]) -> list[int]:
        """Withdraw these calls if no worker holds them yet; the keys withdrawn."""
        wanted = set(keys)
        with self._send_lock:  # no batch half on its way
            with self._lock:
                unsent = [key for key, _ in self._outgoing if key in wanted]
                self._outgoing = [(k, p) for k, p in self._outgoing if k not in wanted]
                by_item = {self._item_ids[k]: k for k in keys if k in self._item_ids}
                queue = self._queue
            if not by_item or queue is None:
                return unsent
            try:
                withdrawn = queue.cancel(list(by_item))
            except CmlrayError:
                return unsent
        return unsent + [by_item[i] for i in withdrawn]

    def _forget(self, key: int) -> None:
        with self._lock:
            self._futures.pop(key, None)
            self._item_ids.pop(key, None)

    # Collecting ------------------------------------------------------------------------

    def _collect(self) -> None:
        """Settle futures as results come (the collector thread).

        Results are pushed to the session by the queue's host (``_queueresults.py``);
        when none come for ``POLL_S``, the queue is asked how it is (which
        fails once it is gone) and ended workers are replaced.
        """
        queue, pages, seen = self._queue, self._queue._pages, 0
        try:
            while True:
                if not pages.wait_beyond(seen, POLL_S):
                    queue.stats()  # raises once the queue is gone
                page, drained = pages.since(seen)
                count = len(page["id"])
                seen += count
                for index in range(count):
                    self._settle(page, index)
                if count:
                    self._replaced_in_a_row = 0  # workers make progress
                    self._warming = False
                if drained and not count:  # every call is in: the queue is dropped
                    queue._drop()
                    return
                if self._broken is not None:
                    return
                if not count:
                    self._keep_workers()
        except CmlrayError as exc:  # the session ended, or the queue with it
            self._break(f"the executor's queue is gone: {exc}")

    def _settle(self, page: dict[str, list[Any]], index: int) -> None:
        """One result of a page (``QueueState.report``'s columns) into its future.

        A call that ran carries its key in its envelope: the call itself (its
        function and arguments) is unpickled only when it never ran to the end.
        """
        ok = page["ok"][index]
        if ok:
            envelope = _pickling.loads(page["result"][index])
            key = envelope[0]
        else:
            key = _pickling.loads(page["item"][index])[0]
        with self._lock:
            future = self._futures.pop(key, None)
            self._item_ids.pop(key, None)
        if future is None or future.cancelled():
            return
        try:
            if not ok:
                future.set_exception(WorkerError(f"the call failed: {page['error'][index]}"))
            elif envelope[1]:
                future.set_result(envelope[2])
            else:
                exc = envelope[2]
                exc.add_note(f"the call's traceback, on its worker:\n{envelope[3]}")
                future.set_exception(exc)
        except futures.InvalidStateError:  # cancelled meanwhile
            pass

    def _keep_workers(self) -> None:
        """Replace workers that ended while calls remain (the collector thread)."""
        with self._lock:
            if not self._futures or self._broken is not None:
                return
        ours = set(self._workers)  # only this thread and _start (before it) launch
        live = [w for w in _api.list_workers() if w["id"] in ours]
        missing = self.max_workers - sum(w["status"] not in FINAL for w in live)
        if missing <= 0:
            return
        if self._replaced_in_a_row + missing > self.max_workers * self.max_attempts:
            ended = [f"{w['name']}: {w['status']} ({w['reason']})" for w in live[-3:]]
            self._break("its workers keep ending: " + "; ".join(ended))
            return
        self._replaced_in_a_row += missing
        self._launch(missing)

    def _break(self, why: str | None) -> None:
        with self._lock:
            self._broken = why
            keys = list(self._futures)
        self._withdraw(keys)  # nothing left for a worker to take
        with self._lock:
            left, self._futures = list(self._futures.values()), {}
            self._item_ids.clear()
        for future in left:
            if not future.done():
                with contextlib.suppress(futures.InvalidStateError):
                    future.set_exception(futures.BrokenExecutor(why))

    def _abort(self, why: str) -> None:
        """End everything now: withdraw what waits, stop the workers, fail what is left.

        For joblib's ``abort_everything`` (its first error, a closed generator).
        """
        with self._lock:
            self._shutdown = True
            queue, workers = self._queue, list(self._workers)
        if queue is None:
            return
        self._break(why)  # withdraws what waits, fails the futures left
        with contextlib.suppress(CmlrayError):
            queue.close()
        self._wake.set()  # the sender ends
        if workers:
            _api.stop_workers(*workers, grace_period_s=0)

    # Shutting down ---------------------------------------------------------------------

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more calls; with ``cancel_futures``, withdraw those no worker holds yet.

        Workers end once the calls left are done. ``wait``: return once they
        are, and every worker has ended.
        """
        with self._lock:
            first = not self._shutdown
            self._shutdown = True
            queue, keys = self._queue, list(self._futures)
        if queue is None:
            return
        if cancel_futures and keys:
            for key in self._withdraw(keys):
                with self._lock:
                    future = self._futures.get(key)
                self._forget(key)
                if future is not None:
                    futures.Future.cancel(future)  # withdrawn: no worker will run it
        self._wake.set()  # the sender sends what is left, then ends
        if self._sender is not None:
            self._sender.join()
        if first:
            with contextlib.suppress(CmlrayError):
                queue.close()
        if wait:
            if self._collector is not None:
                self._collector.join()
            _api.await_workers(self._workers, timeout_seconds=0)  # 0: no limit


def _unpicklable(index: int, exc: Exception) -> TypeError:
    return TypeError(f"the call cannot be pickled ({type(exc).__name__}: {exc})")


def _in_order(pending: list[Any], deadline: float | None, *, chunked: bool) -> Iterator[Any]:
    """Results in submission order; TimeoutError past ``deadline`` (cancels what is left)."""
    try:
        pending.reverse()  # pop from the end: the first submitted first
        while pending:
            future = pending.pop()
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            if chunked:
                yield from future.result(timeout)
            else:
                yield future.result(timeout)
    finally:
        for future in pending:
            future.cancel()
