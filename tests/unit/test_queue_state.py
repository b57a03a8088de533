"""The queue's leasing rules, on the plain state class (no Ray)."""

from __future__ import annotations

import pytest

from cmlray._queue import DONE, FAILED, Outcome, QueueClosedError, QueueState


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def state(**kwargs: object) -> tuple[QueueState, Clock]:
    clock = Clock()
    queue = QueueState(clock=clock, **kwargs)  # type: ignore[arg-type]
    queue.put_many([b"a", b"b", b"c"])
    return queue, clock


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


def test_done_is_recorded_once_even_when_an_item_ran_twice() -> None:
    queue, clock = state(lease_timeout_s=10)
    queue.lease("slow", 1)
    clock.now = 11  # the slow worker's lease expires; the item goes to another worker
    assert queue.lease("fast", 1) == [(0, 2, b"a")]
    queue.complete("fast", [Outcome(0, True, b"first")])
    queue.complete("slow", [(0, True, b"second", None, None)])
    assert queue.results[0] == b"first"
    assert queue.finished == [0] and queue.items[0].state == DONE
    assert queue.requeued == 1


def test_failure_is_retried_then_recorded_with_error_and_traceback() -> None:
    queue, _ = state(max_attempts=2)
    queue.lease("w", 1)
    queue.complete("w", [Outcome(0, False, None, "ValueError: x", "tb1")])
    assert queue.items[0].state == "pending" and queue.requeued == 1
    assert queue.lease("w", 1) == [(0, 2, b"a")]  # a requeued item is first in line
    queue.complete("w", [Outcome(0, False, None, "ValueError: y", "tb2")])
    item = queue.items[0]
    assert (item.state, item.attempts, item.error, item.traceback) == (
        FAILED,
        2,
        "ValueError: y",
        "tb2",
    )
    assert queue.report(0)["ok"] == [False]


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
    assert queue.items[0].state == FAILED
    assert queue.items[0].error == "its worker died (killed by SIGKILL)"


def test_heartbeat_keeps_a_lease() -> None:
    queue, clock = state(lease_timeout_s=10)
    queue.lease("w", 1)
    clock.now = 8
    queue.heartbeat("w")
    clock.now = 15
    queue.expire()
    assert queue.items[0].state == "leased"
    clock.now = 19
    queue.expire()
    assert queue.items[0].state == "pending"
    assert queue.items[0].error == "lease expired after 10 s"


def test_drained_needs_closed_and_settled() -> None:
    queue, _ = state()
    queue.lease("w", 3)
    queue.complete("w", [Outcome(i, True, b"") for i in range(3)])
    assert queue.settled and not queue.drained
    queue.close()
    assert queue.drained
    with pytest.raises(QueueClosedError):
        queue.put_many([b"late"])


def test_report_pages_through_results_in_completion_order() -> None:
    queue, _ = state()
    queue.lease("w", 3)
    queue.complete("w", [Outcome(2, True, b"c!"), Outcome(0, True, b"a!")])
    assert queue.report(0)["id"] == [2, 0]
    assert queue.report(1)["result"] == [b"a!"]
    assert queue.report(0, limit=1)["id"] == [2]
