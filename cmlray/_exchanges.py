"""A worker's program and its queue: the channel, batch sizes, one batch ahead of the work.

The program never joins Ray: each round trip goes over its channel to its
node agent, which answers it from the queue it hosts on the session's node,
or asks that node's agent (``_services.py``, ``_queuehost.py``). A round
trip costs a millisecond or more on a busy node, so for short items it never
waits for one: as soon as a batch arrives, the request for the next one goes
out (reporting the batch before), and the answer is read once the batch is
done (near the end of the queue that early ask is answered with nothing,
and the program asks again when it has run out: ``_queuestate.py``); items
longer than a batch are asked for one batch at a time
(``Exchanges._asks_ahead``). Batches are sized to about ``TARGET_BATCH_S`` of
work, from the items' own times (one item first, then as many as fit), and
to no more than ``TARGET_BATCH_BYTES`` of items and results (``BatchSize``).

Standard library only at import (a program that serves a queue of plain
data never imports cloudpickle; ``_pickling.py`` does on first need).
"""

from __future__ import annotations

import _thread  # (not threading: 1-2 ms of a program's start, for one lock)
import os
import pickle
from collections.abc import Iterator

from cmlray import _channel
from cmlray.errors import QueueError

TYPE_CHECKING = False  # (a worker's program imports this module: see _channel.py)
if TYPE_CHECKING:
    from typing import Any

TARGET_BATCH_S = 0.2
TARGET_BATCH_BYTES = 8 << 20  # a batch's items and results, pickled: big items come fewer a batch
MAX_BATCH = 4096
WAIT_S = 10.0

Leased = tuple[int, int, bytes]


class Client:
    """The program's end of the channel (one per process, thread-safe).

    A request may be *posted* (its reply read later with ``collect``): the
    queue's next batch is asked for while the program works on this one. A
    plain ``request`` made meanwhile (``send_file``, say) first reads the
    posted request's reply and keeps it for ``collect``.
    """

    def __init__(self) -> None:
        fd = os.environ.get(_channel.CHANNEL_ENV)
        if fd is None:
            raise QueueError(
                "cmlray.worker only works inside a worker launched by cmlray.launch_workers"
                f" ({_channel.CHANNEL_ENV} is not set)"
            )
        self._fd = int(fd)
        os.set_inheritable(self._fd, False)  # children of the program must not share it
        self._lock = _thread.allocate_lock()
        self._posted = False
        self._kept: Any = None

    def post(self, *message: Any) -> None:
        """Send a request whose reply ``collect`` reads later."""
        with self._lock:
            self._take_posted()
            _channel.send(self._fd, message)
            self._posted = True

    def collect(self) -> Any:
        """The reply to the request posted last; QueueError for a failed one."""
        with self._lock:
            self._take_posted()
            answer, self._kept = self._kept, None
        return _unwrap(answer)

    def request(self, *message: Any) -> Any:
        with self._lock:
            self._take_posted()
            _channel.send(self._fd, message)
            return _unwrap(_channel.receive(self._fd))

    def _take_posted(self) -> None:
        if self._posted:
            self._kept = _channel.receive(self._fd)
            self._posted = False


def _unwrap(answer: Any) -> Any:
    if answer is None:
        raise QueueError("no request was posted")
    if answer[0] == "error":
        raise QueueError(answer[1])
    return answer[1]


_client: Client | None = None


def client() -> Client:
    """The channel to this worker's node agent (opened on first use)."""
    global _client
    if _client is None:
        _client = Client()
    return _client


def _pickled(outcomes: list[tuple[Any, ...]]) -> bytes:
    """Outcomes as they travel: pickled once here, unpickled once by the queue."""
    return pickle.dumps(outcomes, pickle.HIGHEST_PROTOCOL)


def failure(item_id: int, error: BaseException) -> tuple[Any, ...]:
    """The outcome of an item whose function raised: retried until its attempts run out."""
    import traceback  # only when something failed: a program that never fails never loads it

    text = "".join(traceback.format_exception(error))
    return (item_id, False, None, f"{type(error).__name__}: {error}", text)


class BatchSize:
    """How many items to ask for: ``TARGET_BATCH_S`` of work, ``TARGET_BATCH_BYTES`` at most.

    One item first; then the items' own times (a running mean) decide, and
    their size, pickled, caps it: 4,096 items of a millisecond are 0.2 s of
    work, but of 20 MB each they would be 80 GB in one message and in the
    program's memory (the size of an item and of a result, each a running
    mean from the batches as they travel: their pickles' lengths, free).
    """

    def __init__(self) -> None:
        self.per_item_s: float | None = None
        self._item_bytes: float | None = None
        self._result_bytes: float | None = None

    def want(self) -> int:
        if self.per_item_s is None:
            return 1
        by_time = int(TARGET_BATCH_S / max(self.per_item_s, 1e-6))
        per_item_bytes = (self._item_bytes or 0.0) + (self._result_bytes or 0.0)
        by_bytes = int(TARGET_BATCH_BYTES / max(per_item_bytes, 1.0))
        return max(1, min(MAX_BATCH, by_time, by_bytes))

    def observe(self, items: int, elapsed_s: float) -> None:
        if items:
            self.per_item_s = _mean(self.per_item_s, elapsed_s / items)

    def observe_items(self, items: int, pickled_bytes: int) -> None:
        if items:
            self._item_bytes = _mean(self._item_bytes, pickled_bytes / items)

    def observe_results(self, results: int, pickled_bytes: int) -> None:
        if results:
            self._result_bytes = _mean(self._result_bytes, pickled_bytes / results)


def _mean(mean: float | None, sample: float) -> float:
    return sample if mean is None else 0.5 * (mean + sample)


class Exchanges:
    """A program's round trips with one queue, one batch ahead of the work.

    Iterate ``batches()``; append each item's outcome to ``outcomes`` as it is
    done; they go with the next request. ``close()`` reports what is left.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.channel = client()
        self.outcomes: list[tuple[Any, ...]] = []
        self.size = BatchSize()
        self._asked = False

    def observe(self, items: int, elapsed_s: float) -> None:
        """A batch of ``items`` took ``elapsed_s`` to work."""
        self.size.observe(items, elapsed_s)

    def _ask(self) -> None:
        outcomes, self.outcomes = self.outcomes, []
        pickled = _pickled(outcomes)
        self.size.observe_results(len(outcomes), len(pickled))
        self.channel.post("exchange", self.name, pickled, self.size.want(), WAIT_S)
        self._asked = True

    def _answer(self) -> tuple[list[Leased], bool]:
        self._asked = False
        answer = self.channel.collect()
        leased, drained = pickle.loads(answer)
        self.size.observe_items(len(leased), len(answer))
        return leased, drained

    def batches(self) -> Iterator[list[Leased]]:
        """Leased batches until the queue is closed and drained."""
        self._ask()
        while True:
            leased, drained = self._answer()
            if drained and not leased:
                return
            ahead = self._asks_ahead()
            if ahead:
                self._ask()  # the next batch is on its way while this one is worked
            if leased:
                yield leased
            if not ahead:
                self._ask()

    def _asks_ahead(self) -> bool:
        """Ask for the next batch before working this one: only for short items.

        A round trip is hidden behind a batch of short items (a few percent
        of their time otherwise). An item longer than a whole batch's target
        hides nothing worth it (its round trip is under 1% of it) and an item
        leased ahead of time would wait behind it at the end of the queue
        while another worker idles. Nor before the first item's time is known:
        a worker that starts first would take the second of two long items
        before the other worker has asked.
        """
        per_item_s = self.size.per_item_s
        return per_item_s is not None and per_item_s < TARGET_BATCH_S

    def close(self) -> None:
        """Read the answer still on its way; report the outcomes not reported yet."""
        if self._asked:
            self._answer()
        if self.outcomes:
            outcomes, self.outcomes = self.outcomes, []
            self.channel.request("exchange", self.name, _pickled(outcomes), 0, 0.0)
