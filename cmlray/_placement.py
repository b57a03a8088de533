"""Reserving a worker's resources: one placement group bundle per worker.

A worker no longer is a Ray actor of its own (see ``_agent.py``), so what
makes Ray account its CPU, memory and GPUs is a placement group holding one
bundle of exactly its request. Ray places the bundle on a node that has room
(the worker is ``scheduling`` until then), keeps others from using those
resources, and frees them when the group is removed as the worker ends.

Ray does not tell which GPUs a bundle holds; a task that asks for the
bundle's GPUs learns them (``gpu_ids``): the same ids every time for that
bundle, distinct from any other bundle's or task's, so the worker's
``CUDA_VISIBLE_DEVICES`` is exact.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from typing import Any

from cmlray._spec import WorkerSpec


def bundle(spec: WorkerSpec) -> dict[str, float]:
    """The resources one worker of ``spec`` holds, in Ray's units."""
    resources = {"CPU": spec.cpu, "memory": float(spec.memory_bytes)}
    if spec.nvidia_gpu:
        resources["GPU"] = float(spec.nvidia_gpu)
    if spec.accelerator_type:
        # As Ray's own accelerator_type option does: a sliver of the node's marker.
        resources[f"accelerator_type:{spec.accelerator_type}"] = 0.001
    return resources


def reserve(spec: WorkerSpec, worker_id: str) -> Any:
    """Ask Ray for one worker's resources; returns at once (a pending group)."""
    from ray.util.placement_group import placement_group

    return placement_group([bundle(spec)], name=f"cmlray-{worker_id}")


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


class _Releaser:
    """Removes groups given back before Ray had placed them, once Ray has.

    Ray 2.60 leaks a bundle's resources on its node when a group is removed
    while Ray is still preparing it (ray-project/ray#64693: the node keeps the
    CPU reserved for good, so a later worker that needs it waits forever). A
    worker stopped while ``scheduling`` is such a group; this waits on a
    thread of its own until Ray has placed the group (or dropped it), then
    removes it. A group still waiting for room is never being prepared, but
    nothing tells the two apart, so it waits too.
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


_SETTLED = ("CREATED", "REMOVED")
_releaser = _Releaser()


def release(group: Any) -> None:
    """Give the worker's resources back (harmless if already removed)."""
    _releaser.release(group)


def close() -> None:
    """Remove the groups still waiting to be placed (the session is ending)."""
    _releaser.close()


async def placed_node(group: Any) -> str:
    """Wait until the group is placed; the id of the node that holds it."""
    from ray.util.placement_group import placement_group_table

    await group.ready()
    table = await asyncio.to_thread(placement_group_table, group)
    return str(table["bundles_to_node_id"][0])


def _gpu_ids() -> list[str]:
    import ray

    return [str(gpu) for gpu in ray.get_runtime_context().get_accelerator_ids().get("GPU", [])]


@functools.cache
def _probe() -> Any:
    """The GPU probe as a Ray task (exported to the cluster once per session)."""
    import ray

    return ray.remote(_gpu_ids)


async def gpu_ids(group: Any, count: int) -> list[str]:
    """The ids of the GPUs the group's bundle holds (none asked: none)."""
    if not count:
        return []
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    strategy = PlacementGroupSchedulingStrategy(
        placement_group=group, placement_group_bundle_index=0
    )
    probe = _probe().options(
        num_cpus=0, num_gpus=count, max_retries=0, scheduling_strategy=strategy
    )
    return list(await probe.remote())
