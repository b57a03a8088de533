"""Node types and why workers wait, without Ray: declared types, feasibility, reasons.

The rules of ``_nodetypes.py``, ``_cluster.py`` and ``_waiting.py`` on
cluster views built by hand (the integration runs on Ray's real
autoscalers in tests/test_elastic.py).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from cmlray._cluster import UNKNOWN_TYPES, ClusterView, check_feasible
from cmlray._nodetypes import Catalog, NodeType, parse, seen_on
from cmlray._slabs import Shape
from cmlray._spec import WorkerSpec
from cmlray._waiting import HELD_BY_OTHERS, INFEASIBLE, AutoscalerState, explain
from cmlray.errors import InfeasibleRequestError

GIB = 1 << 30
CPU2 = {"cpu2": {"resources": {"CPU": 2, "memory": 4 * GIB}, "max_workers": 2}}


def _node(cpu: float, group: str | None = None, head: bool = False) -> dict[str, object]:
    resources: dict[str, float] = {"CPU": cpu, "memory": 4.0 * GIB}
    if head:
        resources["node:__internal_head__"] = 1.0
    return {
        "Alive": True,
        "Resources": resources,
        "Labels": {"ray.io/node-group": group} if group else {},
    }


def _spec(cpu: float) -> WorkerSpec:
    return WorkerSpec.from_call(
        "/", n=1, cpu=cpu, memory=0.5, nvidia_gpu=0, kernel="python3", script="",
        code="pass", env=None, grace_period_s=5.0,
    )  # fmt: skip


def test_declared_types_come_as_a_mapping_json_or_a_cluster_config(tmp_path: Path) -> None:
    as_mapping = parse(CPU2)
    assert as_mapping == {"cpu2": NodeType("cpu2", {"CPU": 2.0, "memory": 4.0 * GIB}, 2)}
    assert parse(json.dumps(CPU2)) == as_mapping
    config = tmp_path / "cluster.yaml"
    config.write_text(
        "cluster_name: c\navailable_node_types:\n  cpu2:\n    resources: {CPU: 2, memory: 4294967296}\n    max_workers: 2\n"
    )
    assert parse(str(config)) == as_mapping
    with pytest.raises(ValueError, match=r"node_types\['cpu2'\]\['max_workers'\] must be"):
        parse({"cpu2": {"resources": {"CPU": 2}, "max_workers": -1}})
    with pytest.raises(ValueError, match="no such file"):
        parse("/no/such/cluster.yaml")


def test_a_nodes_label_names_its_type_the_heads_does_not() -> None:
    assert seen_on(_node(2, "cpu2")) == NodeType("cpu2", {"CPU": 2.0, "memory": 4.0 * GIB})
    assert seen_on(_node(0, "headgroup", head=True)) is None
    assert seen_on(_node(2)) is None


def test_feasible_means_an_alive_node_or_a_node_type_holds_one_worker() -> None:
    head_only = [_node(0, "headgroup", head=True)]
    declared = ClusterView(head_only, Catalog(declared=parse(CPU2)), autoscaler=2)
    assert check_feasible(_spec(1), declared) is None  # the autoscaler may add a cpu2
    with pytest.raises(InfeasibleRequestError, match=r"largest node type .* cpu2 \(2 CPU"):
        check_feasible(_spec(8), declared)
    unknown = ClusterView(head_only, Catalog(), autoscaler=2)
    assert check_feasible(_spec(8), unknown) == UNKNOWN_TYPES  # wait, and say why
    static = ClusterView([_node(2)], Catalog(), autoscaler=None)
    with pytest.raises(InfeasibleRequestError, match="largest node has 2 CPU"):
        check_feasible(_spec(8), static)


def test_waiting_reasons_from_the_autoscalers_state() -> None:
    shape = Shape.of(_spec(1))
    busy = ClusterView([_node(2, "cpu2")], Catalog(declared=parse(CPU2)), autoscaler=2)
    assert explain(shape, busy, AutoscalerState()) == (HELD_BY_OTHERS, False)
    full = ClusterView([_node(2, "cpu2"), _node(2, "cpu2")], Catalog(declared=parse(CPU2)), 2)
    reason, _ = explain(shape, full, AutoscalerState())
    assert reason == f"{HELD_BY_OTHERS} (node type cpu2 is at its maximum (2 of 2))"
    empty = ClusterView([_node(0, head=True)], Catalog(declared=parse(CPU2)), autoscaler=2)
    starting = AutoscalerState(starting=Counter({"cpu2": 1}))
    assert explain(shape, empty, starting) == (
        "waiting for a node: the autoscaler is starting 1 x cpu2",
        False,
    )


def test_only_our_own_request_reported_infeasible_with_no_type_known_fails() -> None:
    shape = Shape.of(_spec(8))
    view = ClusterView([_node(0, head=True)], Catalog(), autoscaler=2)
    ours = AutoscalerState(infeasible=[shape.bundle(1)], reports_infeasible=True)
    assert explain(shape, view, ours) == (INFEASIBLE, True)
    others = AutoscalerState(infeasible=[{"CPU": 3.0}], reports_infeasible=True)
    assert explain(shape, view, others) == (UNKNOWN_TYPES, False)
    v1 = ClusterView([_node(0, head=True)], Catalog(), autoscaler=1)
    assert explain(shape, v1, AutoscalerState()) == (UNKNOWN_TYPES, False)
