"""The node types an autoscaler may add, and whether the cluster has an autoscaler at all.

On an elastic cluster (KubeRay, ``ray up``), a request that no alive node can
hold may still fit a node the autoscaler will start. Ray 2.60 has no public
catalogue of node types, so cmlray learns them where it can, in this order:

1. declared by the user: ``cmlray.init(node_types=...)`` or the variable
   ``CMLRAY_NODE_TYPES``: a mapping as Ray's autoscaling config's
   ``available_node_types`` (``{"cpu2": {"resources": {"CPU": 2, "memory":
   4294967296}, "max_workers": 2}}``), as JSON, or the path of a YAML/JSON
   cluster config holding that key (a ``ray up`` config);
2. Ray's own cluster config, when something reported it (the GCS's
   ``__autoscaler_cluster_config``; nothing in Ray 2.60 writes it yet);
3. the head's ``~/ray_bootstrap_config.yaml``, when the session runs on a
   ``ray up`` head;
4. the alive nodes: a node's ``ray.io/node-group`` label (set by KubeRay and
   by Ray's autoscalers) names its type, and its resources are that type's,
   remembered after the node goes.

Whether an autoscaler runs is read from the GCS's key-value store (v2 marks
itself ``__autoscaler_v2_enabled`` in the ``__autoscaler`` namespace; v1's
monitor writes its report to ``__autoscaling_status``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cmlray._slabs import Shape

NODE_TYPES_ENV = "CMLRAY_NODE_TYPES"
NODE_GROUP_LABEL = "ray.io/node-group"
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"
GIB = float(1 << 30)


@dataclass(frozen=True)
class NodeType:
    """A kind of node an autoscaler may start: its resources and how many at most."""

    name: str
    resources: Mapping[str, float]
    max_count: int | None = None  # None: not known

    def holds(self, shape: Shape) -> bool:
        return shape.fits(dict(self.resources)) >= 1

    def describe(self) -> str:
        cpu = self.resources.get("CPU", 0.0)
        memory = self.resources.get("memory", 0.0) / GIB
        gpu = self.resources.get("GPU", 0.0)
        return f"{self.name} ({cpu:g} CPU, {memory:.1f} GiB memory, {gpu:g} GPU)"


def parse(declared: object, argument: str = "node_types") -> dict[str, NodeType]:
    """Node types from a declaration: a mapping, JSON text, or a cluster config's path."""
    if declared is None or declared == "":
        return {}
    if isinstance(declared, str | os.PathLike):
        declared = _load(os.fspath(declared), argument)
    if not isinstance(declared, Mapping):
        raise TypeError(f"{argument} must map type names to node types, got {declared!r}")
    if "available_node_types" in declared:  # a whole cluster config
        declared = declared["available_node_types"]
        if not isinstance(declared, Mapping):
            raise TypeError(f"{argument}: available_node_types must be a mapping")
    types = {}
    for name, spec in declared.items():
        if not isinstance(name, str) or not isinstance(spec, Mapping):
            raise TypeError(f"{argument}[{name!r}] must be a mapping with 'resources'")
        resources = spec.get("resources", {})
        if not isinstance(resources, Mapping) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and v >= 0
            for v in resources.values()
        ):
            raise ValueError(f"{argument}[{name!r}]['resources'] must map names to numbers >= 0")
        top = spec.get("max_workers")
        if top is not None and (not isinstance(top, int) or isinstance(top, bool) or top < 0):
            raise ValueError(f"{argument}[{name!r}]['max_workers'] must be a whole number >= 0")
        types[name] = NodeType(name, {k: float(v) for k, v in resources.items()}, top)
    return types


def _load(text: str, argument: str) -> Any:
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{argument}: not valid JSON ({exc})") from exc
    path = os.path.expanduser(stripped)
    if not os.path.isfile(path):
        raise ValueError(f"{argument}: no such file {path!r} (give a mapping, JSON or a path)")
    import yaml  # Ray's own dependency

    with open(path) as f:
        return yaml.safe_load(f)


def from_ray_config() -> dict[str, NodeType]:
    """The node types Ray's cluster config reports (empty where nothing reported them)."""
    from ray._private.state import state

    try:
        config = state.get_cluster_config()
    except Exception:
        return {}
    if config is None:
        return {}
    return {
        group.name: NodeType(group.name, dict(group.resources), group.max_count or None)
        for group in config.node_group_configs
    }


def from_bootstrap_config() -> dict[str, NodeType]:
    """The node types of a ``ray up`` head's bootstrap config, when the session runs there."""
    path = os.path.expanduser(BOOTSTRAP_CONFIG)
    if not os.path.isfile(path):
        return {}
    try:
        return parse(path, BOOTSTRAP_CONFIG)
    except (TypeError, ValueError, OSError):
        return {}


def reported() -> dict[str, NodeType]:
    """What Ray reports, or a ``ray up`` head's config says (read once, as the session starts)."""
    return {**from_bootstrap_config(), **from_ray_config()}


def seen_on(node: Mapping[str, Any]) -> NodeType | None:
    """The type an alive node (``ray.nodes()`` entry) belongs to, with its resources."""
    name = (node.get("Labels") or {}).get(NODE_GROUP_LABEL)
    if not name or "node:__internal_head__" in node.get("Resources", {}):
        return None  # unlabelled, or the head (never added by an autoscaler)
    resources = {
        k: float(v) for k, v in node.get("Resources", {}).items() if not k.startswith("node:")
    }
    return NodeType(str(name), resources)


@dataclass
class Catalog:
    """Every node type known to the session: declared, reported, or seen."""

    declared: dict[str, NodeType] = field(default_factory=dict)
    reported: dict[str, NodeType] = field(default_factory=dict)
    seen: dict[str, NodeType] = field(default_factory=dict)

    def types(self) -> dict[str, NodeType]:
        """Seen first, then reported, then declared: the later win (they know max counts)."""
        return {**self.seen, **self.reported, **self.declared}

    def learn(self, nodes: list[Mapping[str, Any]]) -> None:
        for node in nodes:
            if node.get("Alive") and (kind := seen_on(node)) is not None:
                self.seen.setdefault(kind.name, kind)

    def holding(self, shape: Shape) -> list[NodeType]:
        return [kind for kind in self.types().values() if kind.holds(shape)]

    def largest(self) -> NodeType | None:
        kinds = list(self.types().values())
        key = lambda k: (k.resources.get("GPU", 0), k.resources.get("CPU", 0))  # noqa: E731
        return max(kinds, key=key) if kinds else None


def autoscaler_version() -> int | None:
    """2 or 1 when an autoscaler may add nodes to this cluster, None when none may.

    A cluster started by hand (``ray start``, ``ray.cluster_utils``) runs v1's
    monitor with Ray's read-only provider: it reports the nodes, each as a type
    of its own (``format_readonly_node_type``), and never adds one.
    """
    import ray

    gcs = ray._private.worker.global_worker.gcs_client
    try:
        if gcs.internal_kv_get(b"__autoscaler_v2_enabled", b"__autoscaler", timeout=5) == b"1":
            return 2
        raw = gcs.internal_kv_get(b"__autoscaling_status", None, timeout=5)
    except Exception:
        return None
    return 1 if raw and not _read_only(json.loads(raw)) else None


def _read_only(status: Mapping[str, Any]) -> bool:
    """Whether v1's status comes from Ray's read-only provider (a hand-made cluster).

    A first report that maps no node yet proves nothing: not read-only.
    """
    from ray.autoscaler._private.util import format_readonly_node_type

    mapping = (status.get("autoscaler_report") or {}).get("node_type_mapping") or {}
    return bool(mapping) and all(
        kind == format_readonly_node_type(node) for node, kind in mapping.items()
    )
