"""The queue's leasing rules, on the plain state class (no Ray)."""

from __future__ import annotations

import pytest

from cmlray._queuestate import QueueClosedError, QueueState


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def state(items: int = 3, **kwargs: object) -> tuple[QueueState, Clock]:
    clock = Clock()
    queue = QueueState(clock=clock, **kwargs)  # type: ignore[arg-type]
    assert queue.put_many([chr(ord("a") + i).encode() for i in range(items)]) == range(items)
    return queue, clock


def ok(item_id: int, result: bytes = b"") -> tuple[int, bool, bytes, None, None]:
    return (item_id, True, result, None, None)


def failed(item_id: int, error: str, tb: str) -> tuple[int, bool, None, str, str]:
    return (item_id, False, None, error, tb)


def test_lease_hands_out_items_in_order_and_counts_attempts() -> None:
    queue, _ = state()
    assert queue.lease("w1", 2) == [(0, 1, b"a"), (1, 1, b"b")]
    assert queue.lease("w2", 5) == [(2, 1, b"c")]
    assert queue.lease("w3", 5) == []
    assert queue.counts() == {
        "pending": 0,
        "leased": 3,
        "done": 0,
        "failed": 0,
        "requeued": 0,
        "total": 3,
    }
    assert queue.holds("w1") and queue.holds("w2") and not queue.holds("w3")


def finish(queue: QueueState, worker: str, leased: list[tuple[int, int, bytes]]) -> None:
    """``worker`` reports the items it leased done."""
    queue.complete(worker, [ok(item_id) for item_id, _, _ in leased])


def lease_and_finish(queue: QueueState, worker: str, want: int) -> int:
    """``worker`` leases up to ``want`` items and reports them done; how many it got."""
    leased = queue.lease(worker, want)
    finish(queue, worker, leased)
    return len(leased)


def test_the_last_items_are_shared_among_the_workers_asking() -> None:
    queue, _ = state(items=10)
    assert len(queue.lease("w1", 100)) == 10  # alone: it may take everything
    queue, _ = state(items=10)
    queue.lease("w2", 0)  # a second worker is asking too
    # each gets half of what is left, rounded up: the last items spread out
    assert [lease_and_finish(queue, w, 20) for w in ("w1", "w2", "w1", "w2")] == [5, 3, 1, 1]


def test_the_last_items_are_not_split_below_a_twentieth_of_a_batch() -> None:
    queue, _ = state(items=1000)
    queue.lease("w2", 0)
    # shares halve down to 4000 / 20 = 200 (about 10 ms of a 0.2 s batch), not to one item
    sizes = [lease_and_finish(queue, w, 4000) for w in ("w1", "w2", "w1", "w2")]
    assert sizes == [500, 250, 200, 50]


def test_asking_ahead_gets_the_next_batch_while_plenty_is_left() -> None:
    queue, _ = state(items=1000)
    queue.lease("w2", 0)
    assert len(queue.lease("w1", 40)) == 40
    # w1 still holds its 40 and asks for the next batch: 960 left, more than the batch it asks for
    assert [item_id for item_id, _, _ in queue.lease("w1", 40)] == list(range(40, 80))


def test_asking_ahead_near_the_end_waits_until_the_worker_runs_out() -> None:
    queue, _ = state(items=70)
    queue.lease("w2", 0)
    first = queue.lease("w1", 40)
    assert len(first) == 35  # its share: half of 70
    # 35 left, less than the batch w1 asks for: it gets nothing while it holds items...
    assert queue.lease("w1", 40) == []
    assert queue.counts()["pending"] == 35
    assert len(queue.lease("w2", 40)) == 18  # ...a worker that has run out gets its share
    finish(queue, "w1", first)
    assert len(queue.lease("w1", 40)) == 9  # and so does w1 once it has run out


def test_done_is_recorded_once_even_when_an_item_ran_twice() -> None:
    queue, clock = state(lease_timeout_s=10)
    queue.lease("slow", 1)
    clock.now = 11  # the slow worker's lease expires; the item goes to another worker
    assert queue.lease("fast", 1) == [(0, 2, b"a")]
    queue.complete("fast", [ok(0, b"first")])
    queue.complete("slow", [ok(0, b"second")])
    assert queue.report(0)["result"] == [b"first"]
    assert queue.finished == [0] and queue.state_of(0) == "done"
    assert queue.requeued == 1


def test_failure_is_retried_then_recorded_with_error_and_traceback() -> None:
    queue, _ = state(max_attempts=2)
    queue.lease("w", 1)
    queue.complete("w", [failed(0, "ValueError: x", "tb1")])
    assert queue.state_of(0) == "pending" and queue.requeued == 1
    assert not queue.holds("w")
    assert queue.lease("w", 1) == [(0, 2, b"a")]  # a requeued item is first in line
    queue.complete("w", [failed(0, "ValueError: y", "tb2")])
    assert queue.state_of(0) == "failed"
    page = queue.report(0)
    assert (page["ok"], page["attempts"], page["error"], page["traceback"]) == (
        [False],
        [2],
        ["ValueError: y"],
        ["tb2"],
    )


def test_released_worker_gives_its_items_back() -> None:
    queue, _ = state()
    queue.lease("dead", 2)
    queue.lease("alive", 1)
    assert queue.release_worker("dead", "its worker died") == 2
    assert queue.counts()["pending"] == 2 and queue.requeued == 2
    assert sorted(i for i, _, _ in queue.lease("alive", 5)) == [0, 1]


def test_dying_worker_counts_as_an_attempt() -> None:
    queue, _ = state(max_attempts=1)
    queue.lease("dead", 1)
    queue.release_worker("dead", "its worker died (killed by SIGKILL)")
    assert queue.state_of(0) == "failed"
    assert queue.report(0)["error"] == ["its worker died (killed by SIGKILL)"]


def test_a_report_or_heartbeat_keeps_the_whole_lease() -> None:
    queue, clock = state(lease_timeout_s=10)
    queue.lease("w", 2)
    clock.now = 8
    queue.heartbeat("w")
    clock.now = 15
    queue.expire()
    assert (queue.state_of(0), queue.state_of(1)) == ("leased", "leased")
    queue.complete("w", [ok(0)])  # at 15: the other item's lease runs to 25
    clock.now = 24
    queue.expire()
    assert queue.state_of(1) == "leased"
    assert queue.next_deadline() == 25
    clock.now = 25
    queue.expire()
    assert queue.state_of(1) == "pending" and queue.next_deadline() is None
    assert queue.errors[1] == ("lease expired after 10 s", None)


def test_drained_needs_closed_and_settled() -> None:
    queue, _ = state()
    queue.lease("w", 3)
    queue.complete("w", [ok(i) for i in range(3)])
    assert queue.settled and not queue.drained
    queue.close()
    assert queue.drained
    with pytest.raises(QueueClosedError):
        queue.put_many([b"late"])


def test_report_pages_through_results_in_completion_order() -> None:
    queue, _ = state()
    queue.lease("w", 3)
    queue.complete("w", [ok(2, b"c!"), ok(0, b"a!")])
    assert queue.report(0)["id"] == [2, 0]
    assert queue.report(0)["item"] == [None, None]  # (the session has the items)
    assert queue.report(1)["result"] == [b"a!"]
    assert queue.report(0, limit=1)["id"] == [2]
    assert queue.counts()["done"] == 2 and queue.counts()["leased"] == 1


def test_cancel_withdraws_only_pending_items() -> None:
    queue, _ = state()
    queue.lease("w", 1)
    assert queue.cancel([0, 1, 7]) == [1]  # 0 is leased; 7 does not exist
    assert queue.state_of(1) == "failed" and queue.errors[1] == ("cancelled", None)
    assert queue.lease("w", 5) == [(2, 1, b"c")]  # the cancelled item is never handed out
    queue.complete("w", [ok(0), ok(2)])
    assert queue.settled and queue.counts()["failed"] == 1


def test_a_batch_spans_puts_and_a_requeued_item_goes_first() -> None:
    queue, _ = state(items=2)
    queue.put_many([b"x", b"y"])
    assert queue.lease("w", 3) == [(0, 1, b"a"), (1, 1, b"b"), (2, 1, b"x")]
    queue.complete("w", [failed(1, "E: e", "tb")])
    assert queue.lease("w", 5) == [(1, 2, b"b"), (3, 1, b"y")]
    assert queue.counts()["pending"] == 0 and queue.counts()["leased"] == 4


def test_a_batch_with_a_failure_or_a_repeated_id_is_recorded_item_by_item() -> None:
    queue, _ = state(items=4, max_attempts=2)
    queue.lease("w", 4)
    queue.complete("w", [ok(0, b"0"), failed(1, "E: e", "tb"), ok(2, b"2")])
    assert [queue.state_of(i) for i in range(4)] == ["done", "pending", "done", "leased"]
    queue.complete("w", [ok(3, b"first"), ok(3, b"again")])
    assert queue.finished == [0, 2, 3] and queue.report(2)["result"] == [b"first"]
    assert queue.counts() | {"requeued": 0} == {
        "pending": 1,
        "leased": 0,
        "done": 3,
        "failed": 0,
        "requeued": 0,
        "total": 4,
    }
    assert not queue.holds("w")


def test_a_page_with_a_failure_carries_its_error_and_item_beside_the_successes() -> None:
    queue, _ = state(items=3, max_attempts=1)
    queue.lease("w", 3)
    queue.complete("w", [ok(0, b"0"), failed(1, "E: e", "tb"), ok(2, b"2")])
    page = queue.report(0)
    assert page == {
        "id": [0, 1, 2],
        "item": [None, b"b", None],  # only the failed item's: the session has the others
        "ok": [True, False, True],
        "result": [b"0", None, b"2"],
        "error": [None, "E: e", None],
        "traceback": [None, "tb", None],
        "attempts": [1, 1, 1],
    }
    assert queue.report(2)["item"] == [None]
