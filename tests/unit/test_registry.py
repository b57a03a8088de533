"""The registry: waiters woken by the workers they watch, indexes instead of scans."""

from __future__ import annotations

import threading

from cmlray._record import WorkerRecord
from cmlray._registry import Registry


def _records(count: int) -> list[WorkerRecord]:
    return [
        WorkerRecord(
            id=f"{i:016d}", name=f"worker-{i}", cpu=0.1, memory=0.1, nvidia_gpu=0, command="x"
        )
        for i in range(count)
    ]


def test_a_wait_on_some_workers_returns_when_they_end_whatever_the_others_do() -> None:
    registry = Registry()
    records = _records(1000)
    registry.add(records)
    watched = [r.id for r in records[:3]]
    calls = []

    def ended(record: WorkerRecord) -> bool:
        calls.append(record.id)
        return record.final

    result: list[bool] = []
    waiter = threading.Thread(target=lambda: result.append(registry.wait_until(watched, ended, 30)))
    waiter.start()
    others = [r.id for r in records[3:]]
    registry.finish_many(others, "succeeded", "exit code 0")
    assert waiter.is_alive()
    registry.finish_many(watched, "failed", "exit code 1")
    waiter.join(30)
    assert result == [True]
    assert set(calls) <= set(watched)  # the 997 others never evaluated for this wait


def test_live_workers_names_and_last_reasons_are_indexed() -> None:
    registry = Registry()
    records = _records(5)
    records[3].name = records[4].name = "twin"
    registry.add(records)
    registry.finish(records[0].id, "failed", "exit code 3")
    registry.finish(records[1].id, "stopped", "stopped by user")
    assert registry.live_ids() == [r.id for r in records[2:]]
    assert registry.named("twin") == [records[3].id, records[4].id]
    assert registry.last_reasons() == [
        "worker-1 stopped: stopped by user",
        "worker-0 failed: exit code 3",
    ]
    assert registry.wait_until([records[0].id], lambda r: r.final, 0) is True
