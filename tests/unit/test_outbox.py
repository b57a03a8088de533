"""The agent's outbox: one stream for many workers, order kept per worker, caps that pause."""

from __future__ import annotations

import asyncio

import pytest

from cmlray._outbox import Outbox


async def _first_batch(outbox: Outbox) -> list[tuple[str, str, object]]:
    async for batch in outbox.batches():
        return batch
    raise AssertionError("no batch")


def test_one_batch_carries_many_workers_each_in_order() -> None:
    async def run() -> list[tuple[str, str, object]]:
        outbox = Outbox(window_s=0.0)
        for index in range(3):
            outbox.put(f"w{index}", "started", {"pid": index})
        for index in range(3):
            outbox.put(f"w{index}", "out", [f"line {index}"], size=7)
        outbox.put("w1", "exited", {"status": "succeeded"})
        return await _first_batch(outbox)

    batch = asyncio.run(run())
    assert [(w, k) for w, k, _ in batch] == [
        ("w0", "started"), ("w0", "out"),
        ("w1", "started"), ("w1", "out"), ("w1", "exited"),
        ("w2", "started"), ("w2", "out"),
    ]  # fmt: skip


def test_a_worker_over_its_cap_is_paused_until_a_batch_takes_its_output() -> None:
    resumed: list[str] = []

    async def run() -> tuple[bool, list[str]]:
        outbox = Outbox(window_s=0.0, worker_cap_bytes=100, batch_max_bytes=1000)
        outbox.put("loud", "out", ["x" * 150], size=151)
        over = outbox.over_cap("loud")
        outbox.pause("loud", lambda: resumed.append("loud"))
        assert not outbox.over_cap("quiet")
        await _first_batch(outbox)
        return over, list(resumed)

    over, after_batch = asyncio.run(run())
    assert over and after_batch == ["loud"]


def test_a_batch_stops_at_its_size_and_the_rest_waits_in_order() -> None:
    async def run() -> tuple[list[object], list[object]]:
        outbox = Outbox(window_s=0.0, batch_max_bytes=5)
        outbox.put("w", "out", ["first"], size=6)
        outbox.put("w", "out", ["second"], size=7)
        outbox.put("w", "exited", {"status": "succeeded"})
        batches = []
        async for batch in outbox.batches():
            batches.append([payload for _, _, payload in batch])
            if len(batches) == 2:
                break
        return batches[0], batches[1]

    first, second = asyncio.run(run())
    assert first == [["first"]]  # the budget runs out after the first line
    assert second == [["second"], {"status": "succeeded"}]


def test_output_alone_waits_for_the_busy_pace_other_events_do_not() -> None:
    def delay_s(since_last_s: float, *events: tuple[str, int]) -> float:
        outbox = Outbox(window_s=0.002, busy_interval_s=0.01, batch_max_bytes=100)
        for kind, size in events:
            outbox.put("w", kind, ["line"], size=size)
        return outbox._delay_s(since_last_s)

    assert delay_s(1.0, ("out", 5)) == 0.002  # the first output after a quiet spell
    assert delay_s(0.003, ("out", 5), ("usage", 0)) == pytest.approx(0.007)  # output flowing
    assert delay_s(0.003, ("out", 5), ("exited", 0)) == 0.002  # a worker ended: no waiting
    assert delay_s(0.003, ("err", 60), ("out", 60)) == 0.002  # a full batch waits for nothing


def test_a_worker_ending_cuts_the_paced_wait_short() -> None:
    async def run() -> list[str]:
        outbox = Outbox(window_s=0.0, busy_interval_s=3600.0)
        batches = outbox.batches()
        outbox.put("w", "out", ["first"], size=6)
        await anext(batches)  # the first output after a quiet spell goes at once
        outbox.put("w", "out", ["second"], size=7)  # now paced: an hour, unless...
        waiting = asyncio.ensure_future(anext(batches))
        await asyncio.sleep(0)  # (the outbox is in its paced wait)
        outbox.put("w", "exited", {"status": "succeeded"})
        batch = await asyncio.wait_for(waiting, timeout=60)
        return [kind for _, kind, _ in batch]

    assert asyncio.run(run()) == ["out", "exited"]
