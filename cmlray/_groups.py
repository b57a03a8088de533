"""Ray's placement groups, as the reservations use them: create, locate, release safely.

Every call that reaches Ray's control store about a placement group is
here: where a group was placed, which GPUs its bundle holds, how much room
each node has now, and removing a group without tripping Ray 2.60's leak
(ray-project/ray#64693, ``_Releaser``).
"""

from __future__ import annotations

import functools
import itertools
import threading
import time
import uuid
from typing import Any

_names = (f"cmlray-{uuid.uuid4().hex[:12]}-{n}" for n in itertools.count(1))


def create(bundle: dict[str, float]) -> Any:
    """A placement group of one bundle, created in Ray now (placed when Ray finds room)."""
    from ray.util.placement_group import placement_group

    return placement_group([bundle], name=next(_names))


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


def remove_now(group: Any) -> None:
    """Remove a group at once (the session is ending: its job ends with it)."""
    _remove(group)


def close() -> None:
    """At the session's end: remove the groups still waiting to be placed."""
    _releaser.close()
