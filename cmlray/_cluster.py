"""What the cluster's nodes can hold, and what it could hold once an autoscaler adds nodes.

Ray leaves a request that no node could ever hold pending forever. cmlray
checks each launch first: feasible when some alive node, or some node type
the autoscaler may still add (``_nodetypes.py``), can hold one worker.
Otherwise it refuses at once, naming the largest of both; except on a
cluster whose autoscaler does not say which nodes it may add: there the
workers wait, and say why (``_waiting.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cmlray._nodetypes import Catalog, autoscaler_version
from cmlray._rayerrors import session_error
from cmlray._slabs import Shape
from cmlray._spec import GIB, WorkerSpec
from cmlray.errors import InfeasibleRequestError

UNKNOWN_TYPES = (
    "no alive node can hold it, and this cluster's autoscaler does not say which nodes it"
    " may add: waiting for one (declare the node types with cmlray.init(node_types=...)"
    " to be told at once what fits)"
)


def describe_resources(resources: Mapping[str, float]) -> str:
    text = (
        f"{resources.get('CPU', 0.0):g} CPU, {resources.get('memory', 0.0) / GIB:.1f} GiB memory,"
        f" {resources.get('GPU', 0.0):g} GPU"
    )
    prefix = "accelerator_type:"
    kinds = sorted(k[len(prefix) :] for k in resources if k.startswith(prefix))
    return text + (f" ({', '.join(kinds)})" if kinds else "")


@dataclass
class ClusterView:
    """The alive nodes, the node types known, and the autoscaler, as read now."""

    nodes: list[dict[str, Any]] = field(default_factory=list)
    catalog: Catalog = field(default_factory=Catalog)
    autoscaler: int | None = None

    def alive_holding(self, shape: Shape) -> list[dict[str, Any]]:
        return [n for n in self.nodes if shape.fits(n.get("Resources", {})) >= 1]

    def largest_node(self) -> dict[str, Any] | None:
        def size(node: dict[str, Any]) -> tuple[float, float, float]:
            r = node.get("Resources", {})
            return (r.get("GPU", 0.0), r.get("CPU", 0.0), r.get("memory", 0.0))

        return max(self.nodes, key=size) if self.nodes else None


def read(catalog: Catalog, *, autoscaler: bool = True) -> ClusterView:
    """The cluster now: its alive nodes (their types learnt), and whether it autoscales.

    Without ``autoscaler``, the view says none (two reads of Ray's GCS fewer).
    """
    import ray

    try:
        nodes = [node for node in ray.nodes() if node.get("Alive")]
    except Exception as exc:
        raise session_error(exc, "reading the cluster's nodes") from exc
    catalog.learn(nodes)
    return ClusterView(nodes, catalog, autoscaler_version() if autoscaler else None)


def feasibility(spec: WorkerSpec, catalog: Catalog) -> str | None:
    """``check_feasible`` on the cluster as it is now (what a launch checks first).

    The autoscaler is asked about only when no alive node or known node type
    holds a worker: its two GCS reads took 6 ms of every launch.
    """
    view = read(catalog, autoscaler=False)
    shape = Shape.of(spec)
    if view.alive_holding(shape) or catalog.holding(shape):
        return None
    view.autoscaler = autoscaler_version()
    return check_feasible(spec, view)


def check_feasible(spec: WorkerSpec, view: ClusterView) -> str | None:
    """None when one worker of ``spec`` fits an alive node or a known node type.

    Returns a note (the workers' reason while they wait) when it fits no
    alive node and the cluster autoscales without saying which nodes it may
    add; raises InfeasibleRequestError when nothing can ever hold it.
    """
    shape = Shape.of(spec)
    if view.alive_holding(shape) or view.catalog.holding(shape):
        return None
    if view.autoscaler is not None and not view.catalog.types():
        return UNKNOWN_TYPES
    wanted = f"cpu={spec.cpu:g}, memory={spec.memory_gib:g} GiB, nvidia_gpu={spec.nvidia_gpu}"
    if spec.accelerator_type:
        wanted += f", accelerator {spec.accelerator_type!r}"
    largest = view.largest_node()
    if largest is None:
        why = ": the cluster has no alive node"
    else:
        why = f"; the largest node has {describe_resources(largest.get('Resources', {}))}"
    kind = view.catalog.largest()
    if kind is not None:
        why += f", and the largest node type the autoscaler may add is {kind.describe()}"
    raise InfeasibleRequestError(f"no node can hold {wanted}{why}")
