"""How workers' reservations are cut into slabs (``_reservations.py``), without Ray."""

from __future__ import annotations

from cmlray._slabs import Shape, plan_slabs

GIB = 1 << 30


def test_small_workers_share_slabs_of_about_one_core_big_ones_get_their_own() -> None:
    assert Shape(0.25, GIB // 10).slab_slots() == 4
    assert Shape(1.9 / 1000, int(0.012 * GIB)).slab_slots() == 166  # memory bounds it: 2 GiB
    assert Shape(1.0, GIB).slab_slots() == 1
    assert Shape(0.1, GIB // 10, gpu=1).slab_slots() == 1  # GPUs are never held idle in bulk


def test_a_slab_holds_k_times_its_shape_accelerator_marker_included() -> None:
    shape = Shape(0.25, 100, gpu=0, accelerator="A100")
    assert shape.bundle(4) == {"CPU": 1.0, "memory": 400.0, "accelerator_type:A100": 0.004}
    assert shape.fits({"CPU": 0.9, "memory": 1000.0, "accelerator_type:A100": 1.0}) == 3
    assert shape.fits({"CPU": 4.0, "memory": 1000.0}) == 0  # no such accelerator there


def test_slabs_fill_the_room_nodes_have_now_then_ask_for_the_rest() -> None:
    shape = Shape(0.25, 100)
    room = {"a": {"CPU": 0.5, "memory": 1e9}, "b": {"CPU": 2.0, "memory": 1e9}}
    assert plan_slabs(shape, 14, room) == [4, 4, 2, 4]  # b: 8, a: 2, then 4 that wait
    assert plan_slabs(shape, 3, {}) == [3]  # nothing free: one ask for all three
    assert plan_slabs(Shape(1.0, 100), 2, room) == [1, 1]
