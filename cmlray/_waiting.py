"""Why a worker is still ``scheduling``, in words; and when waiting is hopeless.

Once a second while workers wait for their resources, the session reads
the cluster (its alive nodes, the node types it knows, and the autoscaler's
own state: v2's pending instance requests, pending instances and
infeasible requests; v1's pending launches) and puts each waiting worker's
reason in words, shown in its ``reason``, in ``watch()`` and the CLI's
table, and in ``await_workers``' failures at the timeout:

- ``waiting for resources held by other workers`` (some alive node can hold it);
- ``waiting for a node: the autoscaler is starting 1 x cpu2``;
- ``node type cpu2 is at its maximum (2 of 2)``;
- ``waiting for a node that can hold it: the autoscaler has not started one yet``.

A request that the autoscaler reports infeasible, and that no alive node and
no known node type can hold, fails with that reason (v2 only: v1 does not
report infeasible requests, so such workers wait, saying why).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from cmlray import _cluster
from cmlray._cluster import UNKNOWN_TYPES, ClusterView
from cmlray._nodetypes import NODE_GROUP_LABEL, Catalog
from cmlray._registry import Registry
from cmlray._reservations import ReservationPool
from cmlray._slabs import Shape

EXPLAIN_EVERY_S = 1.0
HELD_BY_OTHERS = "waiting for resources held by other workers"
NOT_STARTED = "waiting for a node that can hold it: the autoscaler has not started one yet"
INFEASIBLE = (
    "infeasible: no alive node and no node type the autoscaler may add can hold it"
    " (the autoscaler reports it infeasible)"
)


@dataclass
class AutoscalerState:
    """What the autoscaler says it is doing: nodes starting by type, requests it cannot meet."""

    starting: Counter[str] = field(default_factory=Counter)
    infeasible: list[Mapping[str, float]] = field(default_factory=list)
    reports_infeasible: bool = False


def read_autoscaler(version: int | None) -> AutoscalerState:
    """The autoscaler's state from the GCS (v2's autoscaling state, v1's status report)."""
    import ray

    state = AutoscalerState()
    gcs = ray._private.worker.global_worker.gcs_client
    try:
        if version == 2:
            from ray.core.generated.autoscaler_pb2 import GetClusterStatusReply

            reply = GetClusterStatusReply.FromString(gcs.get_cluster_status(timeout_s=5))
            scaling = reply.autoscaling_state
            for request in scaling.pending_instance_requests:
                state.starting[request.ray_node_type_name] += request.count
            for instance in scaling.pending_instances:
                state.starting[instance.ray_node_type_name] += 1
            state.reports_infeasible = True
            for single in scaling.infeasible_resource_requests:
                state.infeasible.append(dict(single.resources_bundle))
            for gang in scaling.infeasible_gang_resource_requests:
                state.infeasible += [dict(r.resources_bundle) for r in gang.requests]
        elif version == 1:
            raw = gcs.internal_kv_get(b"__autoscaling_status", None, timeout=5)
            report = json.loads(raw).get("autoscaler_report", {}) if raw else {}
            state.starting.update(report.get("pending_launches", {}))
            for _node, kind, *_rest in report.get("pending_nodes", []):
                state.starting[kind] += 1
    except Exception:  # the autoscaler says nothing now: explain with what is known
        return AutoscalerState()
    return state


def _proportional(bundle: Mapping[str, float], shape: Shape) -> bool:
    """Whether ``bundle`` is a whole number of workers of ``shape`` (one of our asks)."""
    wanted = {k: v for k, v in shape.bundle().items() if v > 0}
    if set(bundle) - set(wanted) - {"bundle"} or not wanted:
        return False
    ratios = {round(bundle.get(k, 0.0) / v, 3) for k, v in wanted.items()}
    return len(ratios) == 1 and (k := ratios.pop()) >= 1 and math.isclose(k, round(k))


def explain(shape: Shape, view: ClusterView, scaling: AutoscalerState) -> tuple[str, bool]:
    """(why workers of ``shape`` wait, whether that is for good)."""
    types = view.catalog.holding(shape)
    alive = Counter(str((n.get("Labels") or {}).get(NODE_GROUP_LABEL, "")) for n in view.nodes)
    at_max = [
        f"node type {t.name} is at its maximum ({alive[t.name]} of {t.max_count})"
        for t in types
        if t.max_count is not None and alive[t.name] >= t.max_count
    ]
    if view.alive_holding(shape):
        return (f"{HELD_BY_OTHERS} ({'; '.join(at_max)})" if at_max else HELD_BY_OTHERS), False
    starting = {t.name: scaling.starting[t.name] for t in types if scaling.starting[t.name]}
    if not types and scaling.starting:  # types unknown: any node starting may hold it
        starting = dict(scaling.starting)
    if starting:
        counts = ", ".join(f"{n} x {name}" for name, n in sorted(starting.items()))
        return f"waiting for a node: the autoscaler is starting {counts}", False
    if at_max and len(at_max) == len(types):
        return "; ".join(at_max), False
    if view.autoscaler is None:
        return HELD_BY_OTHERS, False
    ours = any(_proportional(b, shape) for b in scaling.infeasible)
    if not types and scaling.reports_infeasible and ours:
        return INFEASIBLE, True
    return (UNKNOWN_TYPES if not view.catalog.types() else NOT_STARTED), False


def shapes_waiting(waiting: Mapping[str, tuple[Shape, float]]) -> dict[Shape, list[str]]:
    """The waiting workers by shape."""
    found: dict[Shape, list[str]] = {}
    for worker_id, (shape, _since) in waiting.items():
        found.setdefault(shape, []).append(worker_id)
    return found


def reasons(
    waiting: Mapping[str, tuple[Shape, float]], view: ClusterView, scaling: AutoscalerState
) -> Iterable[tuple[list[str], str, bool]]:
    """(worker ids, their reason, for good) for every shape waiting."""
    for shape, ids in shapes_waiting(waiting).items():
        reason, hopeless = explain(shape, view, scaling)
        yield ids, reason, hopeless


class Explainer:
    """Runs on the event pump's loop while workers wait: their reasons, and hopeless ones.

    Args:
        give_up: called for each worker whose wait is hopeless, with the reason.
    """

    def __init__(
        self,
        catalog: Catalog,
        registry: Registry,
        reservations: ReservationPool,
        give_up: Callable[[str, str], None],
    ) -> None:
        self._catalog = catalog
        self._registry = registry
        self._reservations = reservations
        self._give_up = give_up
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """Workers were launched: explain while any of them waits (on the loop)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(EXPLAIN_EVERY_S)
            waiting = self._reservations.waiting_since()
            if not waiting:
                return
            view = await asyncio.to_thread(_cluster.read, self._catalog)
            scaling = await asyncio.to_thread(read_autoscaler, view.autoscaler)
            for ids, reason, hopeless in reasons(self._reservations.waiting_since(), view, scaling):
                if hopeless:
                    for worker_id in ids:
                        if self._reservations.cancel(worker_id):
                            self._give_up(worker_id, reason)
                else:
                    self._registry.apply_batch((i, "waiting", reason) for i in ids)
