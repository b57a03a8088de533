"""The items a session's queue keeps by id (``_queueitems.py``): results come home without them."""

from __future__ import annotations

import pickle

from cmlray import _pickling
from cmlray._queueitems import HomeItems


def put(home: HomeItems, items: list[object]) -> int:
    payloads = _pickling.dumps_many(items, lambda i, exc: exc)
    return home.add(items, payloads, _pickling.all_plain(items))


def test_plain_items_are_kept_as_they_are_and_others_as_they_were_put() -> None:
    home = HomeItems()
    assert put(home, [3, "three", b"3", None]) == 0
    params = {"alpha": 0.1}
    assert put(home, [4, params, (5, 6)]) == 4
    params["alpha"] = 99.0  # changed after the put: the item is what was put
    assert list(home.take([5, 0, 4, 2, 6])) == [{"alpha": 0.1}, 3, 4, b"3", (5, 6)]
    assert list(home.take([1, 3])) == ["three", None]


def test_a_failed_put_is_forgotten_and_the_next_takes_its_ids() -> None:
    home = HomeItems()
    put(home, [0, 1])
    first = put(home, [{"lost": True}, 3])
    home.remove_from(first)  # the queue refused the put
    assert put(home, ["two", {"three": 3}]) == 2
    assert list(home.take([2, 3, 0])) == ["two", {"three": 3}, 0]


def test_the_queue_pickles_what_it_keeps_once() -> None:
    """A plain batch is pickled by ``map`` and kept without a second copy."""
    items = list(range(1000))
    home = HomeItems()
    payloads = _pickling.dumps_many(items, lambda i, exc: exc, plain=True)
    assert [pickle.loads(p) for p in payloads] == items
    home.add(items, payloads, plain=True)
    assert list(home.take(range(1000))) == items
    assert home._pickled == {}
