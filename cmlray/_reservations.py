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
  has placed it (``_Releaser``).

Every method runs on the event pump's loop (one thread): no locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cmlray._spec import WorkerSpec

SLAB_CPU = 1.0
SLAB_MEMORY_BYTES = 2 << 30
LINGER_S = 2.0
ROOM_WAIT_S = 1.5
_ROOM_POLL_S = 0.02
_EPSILON = 1e-9


@dataclass(frozen=True)
class Shape:
    """What one worker reserves, in Ray's units."""

    cpu: float
    memory_bytes: int
    gpu: int = 0
    accelerator: str | None = None

    @classmethod
    def of(cls, spec: WorkerSpec) -> Shape:
        return cls(spec.cpu, spec.memory_bytes, spec.nvidia_gpu, spec.accelerator_type)

    def bundle(self, slots: int = 1) -> dict[str, float]:
        """The bundle of ``slots`` workers of this shape."""
        resources = {"CPU": self.cpu * slots, "memory": float(self.memory_bytes * slots)}
        if self.gpu:
            resources["GPU"] = float(self.gpu * slots)
        if self.accelerator:  # as Ray's own accelerator_type option: a sliver of the marker
            resources[f"accelerator_type:{self.accelerator}"] = 0.001 * slots
        return resources

    def slab_slots(self) -> int:
        """Slots of a full slab: small workers share one, a core or more get one each."""
        if self.gpu:
            return 1
        by_cpu = math.floor(SLAB_CPU / self.cpu + _EPSILON)
        by_memory = SLAB_MEMORY_BYTES // max(1, self.memory_bytes)
        return max(1, min(by_cpu, by_memory))

    def fits(self, free: dict[str, float]) -> int:
        """How many workers of this shape ``free`` resources hold."""
        counts = [
            math.floor((free.get(name, 0.0) + _EPSILON) / amount)
            for name, amount in self.bundle().items()
            if amount > 0
        ]
        return max(0, min(counts)) if counts else 0


@dataclass(eq=False)
class Slab:
    """One placement group of ``size`` slots of one shape."""

    group: Any
    shape: Shape
    size: int
    node_id: str | None = None
    gpus: list[str] = field(default_factory=list)
    free: list[int] = field(default_factory=list)
    holders: dict[str, int] = field(default_factory=dict)  # worker id -> slot
    idle_since: float | None = None

    def slot_gpus(self, slot: int) -> tuple[str, ...]:
        per = self.shape.gpu
        return tuple(self.gpus[slot * per : (slot + 1) * per])


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
                release_group(slab.group)

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
            release_group(slab.group)

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
            room = await asyncio.to_thread(free_per_node)
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
            room = await asyncio.to_thread(free_per_node)
            if any(shape.fits(free) for free in room.values()) or time.monotonic() > deadline:
                return room
            await asyncio.sleep(_ROOM_POLL_S)

    def _ask(self, shape: Shape, size: int) -> None:
        from ray.util.placement_group import placement_group

        group = placement_group([shape.bundle(size)], name=next(_names))
        ask = Slab(group, shape, size, free=list(range(size - 1, -1, -1)))
        self._asks.setdefault(shape, []).append(ask)
        self._spawn(self._await_placed(ask))

    async def _await_placed(self, ask: Slab) -> None:
        try:
            await ask.group.ready()
            ask.node_id = await asyncio.to_thread(placed_node, ask.group)
            if ask.shape.gpu:
                ask.gpus = await gpu_ids(ask.group, ask.shape.gpu * ask.size)
        except Exception:
            with contextlib.suppress(ValueError):
                self._asks[ask.shape].remove(ask)
            release_group(ask.group)
            self._cover(ask.shape)
            return
        self._asks[ask.shape].remove(ask)
        if self._closed:
            release_group(ask.group)
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
            _remove(group)
        _releaser.close()


def plan_slabs(shape: Shape, count: int, room: dict[str, dict[str, float]]) -> list[int]:
    """Slab sizes for ``count`` workers: filling the nodes' free room first, largest first."""
    full = shape.slab_slots()
    sizes: list[int] = []
    for free in sorted(room.values(), key=shape.fits, reverse=True):
        fits = shape.fits(free)
        while fits > 0 and count > 0:
            size = min(full, fits, count)
            sizes.append(size)
            fits -= size
            count -= size
    while count > 0:  # no room now: asks Ray (or an autoscaler) fills later
        size = min(full, count)
        sizes.append(size)
        count -= size
    return sizes


def free_per_node() -> dict[str, dict[str, float]]:
    """Each alive node's unreserved resources, as Ray's control store sees them now."""
    from ray._private.state import state

    return dict(state.available_resources_per_node())


def placed_node(group: Any) -> str:
    from ray.util.placement_group import placement_group_table

    return str(placement_group_table(group)["bundles_to_node_id"][0])


def _gpu_ids() -> list[str]:
    import ray

    return [str(gpu) for gpu in ray.get_runtime_context().get_accelerator_ids().get("GPU", [])]


@functools.cache
def _probe() -> Any:
    """The GPU probe as a Ray task (exported to the cluster once per session)."""
    import ray

    return ray.remote(_gpu_ids)


async def gpu_ids(group: Any, count: int) -> list[str]:
    """The ids of the GPUs the group's bundle holds.

    Ray does not tell which GPUs a bundle holds; a task that asks for all of
    them learns their ids: the same for that bundle every time, distinct from
    any other bundle's or task's, so each worker's ``CUDA_VISIBLE_DEVICES`` is exact.
    """
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    strategy = PlacementGroupSchedulingStrategy(
        placement_group=group, placement_group_bundle_index=0
    )
    probe = _probe().options(
        num_cpus=0, num_gpus=count, max_retries=0, scheduling_strategy=strategy
    )
    return list(await probe.remote())


def _remove(group: Any) -> None:
    from ray.util.placement_group import remove_placement_group

    try:
        remove_placement_group(group)
    except Exception:  # already removed, or the cluster is gone with the session
        return


def _state(group: Any) -> str:
    from ray.util.placement_group import placement_group_table

    try:
        # Empty while the group's creation is still on its way to Ray: not settled.
        return str(placement_group_table(group).get("state", "UNKNOWN"))
    except Exception:  # the cluster is gone with the session
        return "REMOVED"


_SETTLED = ("CREATED", "REMOVED")
_names = (f"cmlray-{uuid.uuid4().hex[:12]}-{n}" for n in itertools.count(1))


class _Releaser:
    """Removes groups given back before Ray had placed them, once Ray has.

    Ray 2.60 leaks a bundle's resources on its node when a group is removed
    while Ray is still preparing it (ray-project/ray#64693). A group still
    waiting for room is never being prepared, but nothing tells the two
    apart for sure, so this waits, on a thread of its own, until Ray has
    placed the group (or dropped it), then removes it.
    """

    def __init__(self, poll_s: float = 0.2) -> None:
        self.poll_s = poll_s
        self._lock = threading.Lock()
        self._groups: list[Any] = []
        self._thread: threading.Thread | None = None

    def release(self, group: Any) -> None:
        """Remove ``group`` now if Ray has placed it, else as soon as it has."""
        if _state(group) in _SETTLED:
            _remove(group)
            return
        with self._lock:
            self._groups.append(group)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                groups = list(self._groups)
                if not groups:
                    self._thread = None
                    return
            settled = [g for g in groups if _state(g) in _SETTLED]
            for group in settled:
                _remove(group)
            with self._lock:
                self._groups = [g for g in self._groups if g not in settled]
            time.sleep(self.poll_s)

    def close(self) -> None:
        """At the session's end: remove what is still waiting (its job ends with it)."""
        with self._lock:
            groups, self._groups = self._groups, []
        for group in groups:
            _remove(group)


_releaser = _Releaser()


def release_group(group: Any) -> None:
    """Give a group's resources back (placed: now; still being placed: once it is)."""
    _releaser.release(group)
