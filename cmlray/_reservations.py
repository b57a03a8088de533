"""Reserving workers' resources on Ray: placement groups whose slots workers take in turn.

A worker is no Ray actor of its own (``_nodeagent.py``); what makes Ray
account its CPU, memory and GPUs is a placement group bundle. One group per
worker, as cmlray first did, costs Ray dearly at scale (measured here: 1,000
single-bundle groups on one node take 10.1 s to place, as Ray schedules
groups one at a time and each adds resources to the node's table; one group
holding all 1,000 takes 0.3 s) and makes every wave after a previous one
wait for Ray's placement retry (about 1 s) while the old groups are removed.

So workers of one *shape* (cpu, memory, GPUs, accelerator) take *slots* of a
*slab*: one placement group with a single bundle of ``k`` times the shape,
on one node. A slab holds at most about one core and 2 GiB of small workers
(``SLAB_CPU``, ``SLAB_MEMORY_BYTES``), so a slab kept alive by one
long-running worker holds at most that much idle; workers of a core or more,
or with GPUs, get slabs of one slot. Ray's accounting stays exact: what a
slab holds is the sum of its slots.

- A request takes a free slot of a placed slab of its shape at once (no
  Ray call: a wave launched right after the last one ended starts now);
  otherwise it waits in its shape's queue, and *asks* (new slabs) are
  created to cover the queue, sized to what each node has free now.
- A slot given back goes straight to the next queued request of its shape.
- A slab whose slots have all been free for ``LINGER_S`` is removed, so its
  resources go back to the cluster (and an autoscaler may remove the node).
  When a queue cannot be covered because idle slabs of other shapes hold
  the room, those are removed at once, and the asks wait until Ray shows
  the room free (Ray would otherwise retry them only after its back-off).
- A group is never removed while Ray may be preparing it: Ray 2.60 then
  keeps its resources reserved on the node for good and stops scheduling
  groups (ray-project/ray#64693). A group still waiting is removed once Ray
  has placed it (``_groups.py``).

Every method runs on the event pump's loop (one thread): no locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from cmlray import _groups
from cmlray._slabs import Shape, Slab, plan_slabs

LINGER_S = 2.0
ROOM_WAIT_S = 1.5
_ROOM_POLL_S = 0.02


Placed = Callable[[str, str, tuple[str, ...]], None]  # (worker id, node id, GPU ids)
Failed = Callable[[str, str], None]  # (worker id, reason)


class ReservationPool:
    """Slots for workers; see the module docstring.

    Args:
        on_placed: called when a worker got its slot (its node and GPUs).
        on_failed: called when a worker's reservation failed for good.
        linger_s: how long a slab with no worker stays for the next one.
    """

    def __init__(self, on_placed: Placed, on_failed: Failed, linger_s: float = LINGER_S) -> None:
        self._on_placed = on_placed
        self._on_failed = on_failed
        self._linger_s = linger_s
        self._queues: dict[Shape, dict[str, float]] = {}  # shape -> {worker id: since}, FIFO
        self._asks: dict[Shape, list[Slab]] = {}
        self._slabs: dict[Shape, list[Slab]] = {}  # placed
        self._holding: dict[str, Slab] = {}
        self._covering: set[Shape] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    # Requests ------------------------------------------------------------------------

    def request(self, worker_ids: list[str], shape: Shape) -> None:
        """Find slots for these workers (each gets ``on_placed`` once it has one)."""
        queue = self._queues.setdefault(shape, {})
        now = time.monotonic()
        for worker_id in worker_ids:
            slab = self._free_slab(shape)
            if slab is not None and not queue:
                self._assign(slab, worker_id)
            else:
                queue[worker_id] = now
        self._cover(shape)

    def release(self, worker_id: str) -> None:
        """The worker ended: its slot goes to the next waiting worker, or idles."""
        slab = self._holding.pop(worker_id, None)
        if slab is None:
            return
        slab.free.append(slab.holders.pop(worker_id))
        if not self._serve_queue(slab):
            self._maybe_idle(slab)

    def cancel(self, worker_id: str) -> bool:
        """Withdraw a worker still waiting for a slot; True if it was waiting."""
        return any(queue.pop(worker_id, None) is not None for queue in self._queues.values())

    def drop_node(self, node_id: str) -> None:
        """A node is gone: its slabs are dropped (Ray would place them elsewhere)."""
        for slabs in self._slabs.values():
            for slab in [s for s in slabs if s.node_id == node_id]:
                slabs.remove(slab)
                for worker_id in slab.holders:
                    self._holding.pop(worker_id, None)
                _groups.release_group(slab.group)

    def waiting_since(self) -> dict[str, tuple[Shape, float]]:
        """The workers waiting for a slot: their shape and since when (monotonic)."""
        return {
            wid: (shape, since) for shape, q in self._queues.items() for wid, since in q.items()
        }

    def node_of(self, worker_id: str) -> str | None:
        slab = self._holding.get(worker_id)
        return None if slab is None else slab.node_id

    # Slots ---------------------------------------------------------------------------

    def _free_slab(self, shape: Shape) -> Slab | None:
        for slab in self._slabs.get(shape, ()):
            if slab.free:
                return slab
        return None

    def _assign(self, slab: Slab, worker_id: str) -> None:
        slot = slab.free.pop()
        slab.holders[worker_id] = slot
        slab.idle_since = None
        self._holding[worker_id] = slab
        assert slab.node_id is not None
        self._on_placed(worker_id, slab.node_id, slab.slot_gpus(slot))

    def _serve_queue(self, slab: Slab) -> bool:
        """Give the slab's free slots to its shape's queue, in order; True if any taken."""
        queue = self._queues.get(slab.shape, {})
        served = False
        while slab.free and queue:
            worker_id = next(iter(queue))
            del queue[worker_id]
            self._assign(slab, worker_id)
            served = True
        return served

    def _maybe_idle(self, slab: Slab) -> None:
        if len(slab.free) < slab.size or slab.idle_since is not None:
            return
        slab.idle_since = since = time.monotonic()
        asyncio.get_running_loop().call_later(self._linger_s, self._retire_if_idle, slab, since)

    def _retire_if_idle(self, slab: Slab, since: float) -> None:
        if slab.idle_since == since and len(slab.free) == slab.size:
            self._retire(slab)

    def _retire(self, slab: Slab) -> None:
        slabs = self._slabs.get(slab.shape, [])
        if slab in slabs:
            slabs.remove(slab)
            _groups.release_group(slab.group)

    # Asks: new slabs -----------------------------------------------------------------

    def _cover(self, shape: Shape) -> None:
        """Make sure asks cover the shape's queue (creating them on a task of their own)."""
        if self._closed or shape in self._covering or self._uncovered(shape) <= 0:
            return
        self._covering.add(shape)
        self._spawn(self._make_asks(shape))

    def _uncovered(self, shape: Shape) -> int:
        covered = sum(ask.size for ask in self._asks.get(shape, ()))
        return len(self._queues.get(shape, {})) - covered

    async def _make_asks(self, shape: Shape) -> None:
        try:
            room = await asyncio.to_thread(_groups.free_per_node)
            if not any(shape.fits(free) for free in room.values()) and self._retire_idle_others(
                shape
            ):
                room = await self._room_after_release(shape)
            for size in plan_slabs(shape, self._uncovered(shape), room):
                self._ask(shape, size)
        except Exception as exc:  # the cluster is gone, or Ray refused the group
            queue = self._queues.get(shape, {})
            for worker_id in list(queue)[len(queue) - max(0, self._uncovered(shape)) :]:
                del queue[worker_id]
                self._on_failed(worker_id, f"could not reserve its resources: {exc}")
        finally:
            self._covering.discard(shape)
        if self._uncovered(shape) > 0:
            self._cover(shape)

    def _retire_idle_others(self, shape: Shape) -> bool:
        """Remove every idle slab of other shapes (they hold room this shape needs)."""
        idle = [
            slab
            for other, slabs in self._slabs.items()
            if other != shape
            for slab in slabs
            if len(slab.free) == slab.size
        ]
        for slab in idle:
            self._retire(slab)
        return bool(idle)

    async def _room_after_release(self, shape: Shape) -> dict[str, dict[str, float]]:
        """Ray's free resources once they hold one of ``shape`` (or after ``ROOM_WAIT_S``)."""
        deadline = time.monotonic() + ROOM_WAIT_S
        while True:
            room = await asyncio.to_thread(_groups.free_per_node)
            if any(shape.fits(free) for free in room.values()) or time.monotonic() > deadline:
                return room
            await asyncio.sleep(_ROOM_POLL_S)

    def _ask(self, shape: Shape, size: int) -> None:
        group = _groups.create(shape.bundle(size))
        ask = Slab(group, shape, size, free=list(range(size - 1, -1, -1)))
        self._asks.setdefault(shape, []).append(ask)
        self._spawn(self._await_placed(ask))

    async def _await_placed(self, ask: Slab) -> None:
        try:
            await ask.group.ready()
            ask.node_id = await asyncio.to_thread(_groups.placed_node, ask.group)
            if ask.shape.gpu:
                ask.gpus = await _groups.gpu_ids(ask.group, ask.shape.gpu * ask.size)
        except Exception:
            with contextlib.suppress(ValueError):
                self._asks[ask.shape].remove(ask)
            _groups.release_group(ask.group)
            self._cover(ask.shape)
            return
        self._asks[ask.shape].remove(ask)
        if self._closed:
            _groups.release_group(ask.group)
            return
        self._slabs.setdefault(ask.shape, []).append(ask)
        self._serve_queue(ask)
        self._maybe_idle(ask)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        """The session ends: every group goes (waiting ones too: its job ends with it)."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        groups = [s.group for slabs in (*self._asks.values(), *self._slabs.values()) for s in slabs]
        self._asks.clear()
        self._slabs.clear()
        self._holding.clear()
        for group in groups:
            _groups.remove_now(group)
        _groups.close()
