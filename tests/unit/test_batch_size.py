"""``_exchanges.BatchSize``: how many items a worker's program asks for."""

from __future__ import annotations

from cmlray._exchanges import MAX_BATCH, TARGET_BATCH_BYTES, TARGET_BATCH_S, BatchSize


def test_one_item_first_then_a_batch_of_its_time() -> None:
    size = BatchSize()
    assert size.want() == 1
    size.observe(1, 0.001)
    assert size.want() == round(TARGET_BATCH_S / 0.001)
    for _ in range(30):  # no-op items (a running mean): as many as a batch holds
        size.observe(10, 0.0)
    assert size.want() == MAX_BATCH


def test_big_items_come_fewer_a_batch() -> None:
    size = BatchSize()
    size.observe(1, 0.001)
    size.observe_items(1, 2 << 20)  # 2 MiB an item: 4 of them make the batch
    assert size.want() == TARGET_BATCH_BYTES // (2 << 20)
    size.observe_results(4, 4 * (2 << 20))  # and as big a result each: half as many
    assert size.want() == TARGET_BATCH_BYTES // (4 << 20)
    size.observe_items(1, 40 << 20)  # bigger than a batch: one at a time
    assert size.want() == 1


def test_small_items_leave_the_time_to_decide() -> None:
    size = BatchSize()
    size.observe(1, 0.005)
    size.observe_items(40, 40 * 30)  # 30 bytes an item
    size.observe_results(40, 40 * 30)
    assert size.want() == round(TARGET_BATCH_S / 0.005)
