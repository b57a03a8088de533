"""A queue's results on their way to the session: publishing, pages, and items sent inline (no Ray)."""

from __future__ import annotations

import asyncio
import os
import pickle
from typing import Any

import pytest

from cmlray._queue import INLINE_CHUNK_BYTES, QueueServer, join_payloads, split_payloads
from cmlray._queuehost import QueueHost
from cmlray._queueresults import COLUMNS, ResultPages

Published = list[tuple[int, dict[str, list[Any]], bool]]


def page(start: int, n: int) -> dict[str, list[Any]]:
    ids = list(range(start, start + n))
    return {column: list(ids) for column in COLUMNS}


def test_pages_are_placed_by_start_index_once() -> None:
    pages = ResultPages()
    pages.receive(0, page(0, 3), drained=False)
    pages.receive(5, page(5, 2), drained=False)  # something missing before it: left for a pull
    assert pages.count == 3
    pages.receive(1, page(1, 4), drained=False)  # overlaps: only the new part is added
    assert pages.since(0)[0]["id"] == [0, 1, 2, 3, 4]
    assert pages.since(3) == ({column: [3, 4] for column in COLUMNS}, False)
    pages.receive(5, page(5, 0), drained=True)
    assert pages.since(5)[1] is True


def test_waits_end_on_news_or_time() -> None:
    pages = ResultPages()
    assert not pages.wait_beyond(0, 0.01)
    assert not pages.wait_for(1, 0.01)
    pages.receive(0, page(0, 1), drained=False)
    assert pages.wait_beyond(0, 0.01) and pages.wait_for(1, 0.01)
    assert not pages.wait_beyond(1, 0.01)
    pages.receive(1, page(1, 0), drained=True)
    assert pages.wait_beyond(1, 0.01)  # drained: nothing more will come


def exchange(server: QueueServer, worker: str, outcomes: list[Any], want: int) -> list[Any]:
    answer = asyncio.run(server.exchange_pickled(worker, pickle.dumps(outcomes), want, 0.0))
    leased, _drained = pickle.loads(answer)
    return list(leased)


def test_finished_items_are_published_in_order_then_drained_once() -> None:
    published: Published = []
    server = QueueServer(2, 60.0, lambda *event: published.append(event))
    asyncio.run(server.put_many([b"a", b"b", b"c"]))
    leased = exchange(server, "w1", [], 3)
    assert [item_id for item_id, _, _ in leased] == [0, 1, 2]
    assert published == []
    done = [(0, True, b"A", None, None), (1, False, None, "ValueError: 1", "tb")]
    exchange(server, "w1", done, 0)
    (start, first, drained), *more = published
    assert (start, first["id"], first["result"], drained, more) == (0, [0], [b"A"], False, [])
    assert first["item"] == [None]  # without items: the caller knows its items by id
    exchange(server, "w1", [(1, True, b"B", None, None), (2, True, b"C", None, None)], 0)
    asyncio.run(server.close())
    asyncio.run(server.stats())  # nothing new: nothing published again
    starts = [(start, p["id"], drained) for start, p, drained in published]
    assert starts == [(0, [0], False), (1, [1, 2], False), (3, [], True)]


def test_a_failed_item_is_published_with_its_item() -> None:
    published: Published = []
    server = QueueServer(1, 60.0, lambda *event: published.append(event))
    asyncio.run(server.put_many([b"x"]))
    exchange(server, "w1", [], 1)
    exchange(server, "w1", [(0, False, None, "KeyError: 'k'", "tb")], 0)
    ((_, failed, _),) = published
    assert failed["item"] == [b"x"] and failed["ok"] == [False]
    assert failed["error"] == ["KeyError: 'k'"]


def test_items_travel_joined_in_chunks_under_the_inline_limit() -> None:
    for payloads in ([], [b""], [os.urandom(200_000), b"", b"xyz"], [b"p" * n for n in range(300)]):
        chunks = join_payloads(payloads)
        assert all(len(chunk) <= INLINE_CHUNK_BYTES for chunk in chunks)
        assert split_payloads(tuple(chunks)) == payloads


def test_a_dropped_queue_tells_a_late_worker_it_is_drained() -> None:
    sent: list[Any] = []
    host = QueueHost(lambda *event: sent.append(event))
    host.open("calls", 3, 60.0)
    asyncio.run(host.call("calls", "close"))
    assert [event[:2] for event in sent] == [("queue:calls", "results")]  # drained, published
    host.drop("calls")
    assert host.servers() == {}
    answer = asyncio.run(host.call("calls", "exchange_pickled", "w9", pickle.dumps([]), 1, 5.0))
    assert pickle.loads(answer) == ([], True)
    with pytest.raises(LookupError, match="no queue named 'calls'"):
        asyncio.run(host.call("calls", "stats"))
    with pytest.raises(LookupError, match="already has a queue named 'calls'"):
        host.open("calls", 3, 60.0)


def done(answer: bytes) -> bytes:
    """The outcomes of a worker that ran every item it leased (``answer``)."""
    leased, _drained = pickle.loads(answer)
    return pickle.dumps([(item_id, True, b"r", None, None) for item_id, _, _ in leased])


def test_pages_wait_while_items_are_pending_but_not_when_it_matters() -> None:
    async def scenario() -> list[list[tuple[int, list[Any]]]]:
        published: Published = []
        # pages 60 s apart at most: a page goes out at once only when it matters
        server = QueueServer(1, 60.0, lambda *event: published.append(event), publish_every_s=60.0)
        seen = []

        def pages() -> None:
            seen.append([(start, page["id"]) for start, page, _ in published])

        await server.put_many([b"i"] * 5)
        first = await server.exchange_pickled("w1", pickle.dumps([]), 1, 0.0)
        await server.exchange_pickled("w1", done(first), 0, 0.0)
        pages()  # the first page after a quiet spell: at once
        second = await server.exchange_pickled("w1", pickle.dumps([]), 2, 0.0)
        await server.exchange_pickled("w1", done(second), 0, 0.0)
        pages()  # 2 items pending: the page waits
        last = await server.exchange_pickled("w1", pickle.dumps([]), 2, 0.0)
        pages()  # nothing pending (the session may be about to feed more): at once
        await server.exchange_pickled("w1", done(last), 0, 0.0)
        pages()  # still nothing pending: at once
        return seen

    seen = asyncio.run(scenario())
    assert seen == [
        [(0, [0])],
        [(0, [0])],
        [(0, [0]), (1, [1, 2])],
        [(0, [0]), (1, [1, 2]), (3, [3, 4])],
    ]


def test_a_page_held_back_goes_out_when_its_time_comes() -> None:
    async def scenario() -> Published:
        published: Published = []
        arrived = asyncio.Event()

        def publish(*event: Any) -> None:
            published.append(event)
            arrived.set()

        server = QueueServer(1, 60.0, publish, publish_every_s=0.05)
        await server.put_many([b"i"] * 4)
        first = await server.exchange_pickled("w1", pickle.dumps([]), 1, 0.0)
        await server.exchange_pickled("w1", done(first), 0, 0.0)
        second = await server.exchange_pickled("w1", pickle.dumps([]), 1, 0.0)
        arrived.clear()
        await server.exchange_pickled("w1", done(second), 0, 0.0)
        await asyncio.wait_for(arrived.wait(), 5.0)  # 2 items still pending: by its timer
        return published

    published = asyncio.run(scenario())
    assert [(start, page["id"], drained) for start, page, drained in published] == [
        (0, [0], False),
        (1, [1], False),
    ]


def test_a_full_page_goes_out_at_once_though_items_are_pending() -> None:
    async def scenario() -> list[tuple[int, list[Any]]]:
        published: Published = []
        server = QueueServer(
            1, 60.0, lambda *event: published.append(event), publish_every_s=60.0,
            page_full_results=3,
        )  # fmt: skip
        await server.put_many([b"i"] * 10)
        first = await server.exchange_pickled("w1", pickle.dumps([]), 1, 0.0)
        await server.exchange_pickled("w1", done(first), 0, 0.0)  # after a quiet spell
        two = await server.exchange_pickled("w1", pickle.dumps([]), 2, 0.0)
        await server.exchange_pickled("w1", done(two), 0, 0.0)  # 2 wait: held back
        held = [(start, page["id"]) for start, page, _ in published]
        three = await server.exchange_pickled("w1", pickle.dumps([]), 1, 0.0)
        await server.exchange_pickled("w1", done(three), 0, 0.0)  # 3 wait: a full page
        assert held == [(0, [0])]
        return [(start, page["id"]) for start, page, _ in published]

    assert asyncio.run(scenario()) == [(0, [0]), (1, [1, 2, 3])]
