"""What the cluster's nodes can hold, checked before anything is created.

Ray leaves an actor that no node could ever hold pending forever (after
about 6 s the autoscaler logs a line; no exception). cmlray compares each
request with every alive node's total resources first and refuses at once,
naming the largest node's capacity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cmlray._rayerrors import session_error
from cmlray._spec import GIB, WorkerSpec
from cmlray.errors import InfeasibleRequestError


@dataclass(frozen=True)
class NodeCapacity:
    """A node's total resources, in cmlray's units."""

    node_id: str
    ip: str
    cpu: float
    memory_gib: float
    gpu: float
    accelerator_types: frozenset[str]

    def holds(self, spec: WorkerSpec) -> bool:
        return (
            spec.cpu <= self.cpu + 1e-9
            and spec.memory_bytes <= self.memory_gib * GIB + 1
            and spec.nvidia_gpu <= self.gpu
            and (spec.accelerator_type is None or spec.accelerator_type in self.accelerator_types)
        )

    def describe(self) -> str:
        text = f"{self.cpu:g} CPU, {self.memory_gib:.1f} GiB memory, {self.gpu:g} GPU"
        if self.accelerator_types:
            text += f" ({', '.join(sorted(self.accelerator_types))})"
        return text


def _capacity(node: dict[str, Any]) -> NodeCapacity:
    resources = node.get("Resources", {})
    prefix = "accelerator_type:"
    return NodeCapacity(
        node_id=node.get("NodeID", ""),
        ip=node.get("NodeManagerAddress", ""),
        cpu=float(resources.get("CPU", 0.0)),
        memory_gib=float(resources.get("memory", 0.0)) / GIB,
        gpu=float(resources.get("GPU", 0.0)),
        accelerator_types=frozenset(k[len(prefix) :] for k in resources if k.startswith(prefix)),
    )


def alive_nodes() -> list[NodeCapacity]:
    """Every alive node's capacity."""
    import ray

    try:
        nodes = ray.nodes()
    except Exception as exc:
        raise session_error(exc, "reading the cluster's nodes") from exc
    return [_capacity(node) for node in nodes if node.get("Alive")]


def largest(nodes: list[NodeCapacity]) -> NodeCapacity:
    return max(nodes, key=lambda n: (n.gpu, n.cpu, n.memory_gib))


def check_feasible(spec: WorkerSpec, nodes: list[NodeCapacity]) -> None:
    """Raise InfeasibleRequestError if no node could ever hold one worker of ``spec``."""
    if any(node.holds(spec) for node in nodes):
        return
    wanted = f"cpu={spec.cpu:g}, memory={spec.memory_gib:g} GiB, nvidia_gpu={spec.nvidia_gpu}"
    if spec.accelerator_type:
        wanted += f", accelerator {spec.accelerator_type!r}"
    if not nodes:
        raise InfeasibleRequestError(f"no node can hold {wanted}: the cluster has no alive node")
    raise InfeasibleRequestError(
        f"no node can hold {wanted}; the largest node has {largest(nodes).describe()}"
    )
