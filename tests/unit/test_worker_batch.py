"""``cmlray.worker._work``: one leased batch through ``fn``, outcomes as the queue reads them."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from cmlray.worker import _work


def _leased(*items: Any) -> list[tuple[int, int, bytes]]:
    return [(item_id, 1, pickle.dumps(item)) for item_id, item in enumerate(items)]


def _by_id(outcomes: list[tuple[Any, ...]]) -> dict[int, tuple[Any, ...]]:
    return {outcome[0]: outcome for outcome in outcomes}


def test_every_item_unpickled_before_the_first_call_and_plain_results_pickled_after() -> None:
    seen: list[Any] = []
    outcomes: list[tuple[Any, ...]] = []

    def fn(item: Any) -> Any:
        seen.append(item)
        assert outcomes == [], "an outcome was recorded while the batch was still worked"
        return item * 2

    assert _work(_leased(1, "a", 2.5), fn, outcomes) == 3
    assert seen == [1, "a", 2.5]
    assert [(i, ok, pickle.loads(r), e) for i, ok, r, e, _ in outcomes] == [
        (0, True, 2, None), (1, True, "aa", None), (2, True, 5.0, None),
    ]  # fmt: skip


def test_a_result_of_another_type_is_kept_as_it_was_returned() -> None:
    shared: dict[str, int] = {"calls": 0}

    def fn(item: int) -> dict[str, int]:
        shared["calls"] += 1  # the same object, changed by every later call
        return shared

    outcomes: list[tuple[Any, ...]] = []
    assert _work(_leased(10, 11, 12), fn, outcomes) == 3
    assert [pickle.loads(o[2]) for o in outcomes] == [{"calls": 1}, {"calls": 2}, {"calls": 3}]


def test_a_tuple_waits_only_when_all_it_holds_is_plain() -> None:
    shared: list[int] = []

    def fn(item: int) -> tuple[Any, ...]:
        shared.append(item)
        return (item, "envelope") if item % 2 else (item, shared)

    outcomes: list[tuple[Any, ...]] = []
    assert _work(_leased(1, 2, 3, 4), fn, outcomes) == 4
    assert [pickle.loads(o[2]) for o in outcomes] == [
        (1, "envelope"), (2, [1, 2]), (3, "envelope"), (4, [1, 2, 3, 4]),
    ]  # fmt: skip


def test_an_item_that_does_not_load_or_raises_fails_alone() -> None:
    leased = _leased(1, 2, 3)
    leased[0] = (0, 1, b"not a pickle")

    def fn(item: int) -> int:
        if item == 2:
            raise ValueError("two is bad")
        return item

    outcomes: list[tuple[Any, ...]] = []
    assert _work(leased, fn, outcomes) == 1
    by_id = _by_id(outcomes)
    assert by_id[0][1] is False and by_id[0][3].startswith("UnpicklingError")
    assert by_id[1][1:4] == (False, None, "ValueError: two is bad")
    assert "Traceback" in by_id[1][4]
    assert by_id[2][1] is True and pickle.loads(by_id[2][2]) == 3


def test_a_program_interrupted_mid_batch_keeps_what_it_finished() -> None:
    def fn(item: int) -> int:
        if item == 3:
            raise KeyboardInterrupt
        return item

    outcomes: list[tuple[Any, ...]] = []
    with pytest.raises(KeyboardInterrupt):
        _work(_leased(1, 2, 3, 4), fn, outcomes)
    assert [(o[0], pickle.loads(o[2])) for o in outcomes] == [(0, 1), (1, 2)]
