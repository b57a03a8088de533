"""Self-tests of tests/clusters/autoscaling.py with raw Ray (no cmlray).

What cmlray does on such clusters (scale-up from zero, scale-down, requests
no node type holds) is tested in tests/test_elastic.py; here, the fixture
itself: two clusters side by side, nothing left after ``close()``, and what
Ray says of a node that leaves (which ``_rayerrors`` reads).

One v1 and one v2 cluster start together and run side by side for the whole
module (which is also the check that two coexist on this machine); each test
connects a driver to one of them in turn. Their head has no CPU, so any CPU
request needs a worker node. Times measured are printed (``-s`` shows them).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import ray
from ray.core.generated.common_pb2 import ActorDiedErrorContext, NodeDeathInfo

from tests.clusters.autoscaling import AutoscalingCluster, skip_reason
from tests.support.processes import marked_environment_values, wait_no_marked_processes

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leaks")]

IDLE_TIMEOUT_S = 6.0
VERSIONS = [1, 2]


@pytest.fixture(scope="module")
def clusters() -> Iterator[dict[int, AutoscalingCluster]]:
    """A v1 and a v2 cluster, started at once; after them, no process of theirs is left."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    made = {v: AutoscalingCluster(v, idle_timeout_s=IDLE_TIMEOUT_S) for v in VERSIONS}
    try:
        with ThreadPoolExecutor(len(made)) as pool:
            list(pool.map(AutoscalingCluster.start, made.values()))
        print({f"v{v}": f"started in {c.start_s:.1f} s" for v, c in made.items()})
        yield made
    finally:
        had = {v: len(c.processes()) for v, c in made.items()}
        for cluster in made.values():
            cluster.close()
    assert all(had.values()), f"a cluster had no process to end: {had}"
    assert not [c.root for c in made.values() if c.root.exists()]
    assert not wait_no_marked_processes(), "close() left processes"


@contextlib.contextmanager
def driver(cluster: AutoscalingCluster) -> Iterator[None]:
    """This process as a driver of ``cluster`` for the block."""
    with cluster.as_client():
        ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
        try:
            yield
        finally:
            ray.shutdown()


class _Holder:
    def node(self) -> str:
        return str(ray.get_runtime_context().get_node_id())


Holder: Any = ray.remote(max_restarts=0)(_Holder)  # an actor that says where it lives


def death(node_id: str) -> tuple[str, str]:
    """What ``ray.nodes()`` says of a dead node: (reason's name, message)."""
    node = next(n for n in ray.nodes() if n["NodeID"] == node_id)
    assert not node["Alive"]
    return NodeDeathInfo.Reason.Name(node["DeathReason"]), node["DeathReasonMessage"]


def actor_death(actor: ray.actor.ActorHandle) -> tuple[str | None, str, str]:
    """The GCS's ``DeathCause`` of a dead actor: (context, its reason, node death reason)."""
    cause = ray._private.state.state.actor_table(actor._actor_id.hex())["DeathCause"]
    died = cause.actor_died_error_context
    node = NodeDeathInfo.Reason.Name(died.node_death_info.reason)
    return cause.WhichOneof("context"), ActorDiedErrorContext.Reason.Name(died.reason), node


def test_two_clusters_side_by_side(clusters: dict[int, AutoscalingCluster]) -> None:
    v1, v2 = clusters[1], clusters[2]
    assert v1.address != v2.address and v1.root != v2.root
    heads = [c.gcs_nodes() for c in (v1, v2)]
    assert [n.node_id.hex() for n in heads[0]] == [n.node_id.hex() for n in heads[1]]  # fff..0
    assert marked_environment_values("RAY_AUTH_MODE") == {"token"}
    tokens = marked_environment_values("RAY_AUTH_TOKEN_PATH")
    assert tokens == {str(v1.token_path), str(v2.token_path)}
    assert {os.stat(c.token_path).st_mode & 0o777 for c in (v1, v2)} == {0o600}


def test_node_that_leaves_says_why(clusters: dict[int, AutoscalingCluster]) -> None:
    """A SIGKILLed raylet: UNEXPECTED_TERMINATION; a drained and stopped one: DRAIN_PREEMPTED.

    These are the GCS's words, the same under v1 (measured by hand), so v2 only.
    """
    cluster = clusters[2]
    with driver(cluster):
        crashed, removed = Holder.options(num_cpus=2).remote(), Holder.options(num_cpus=2).remote()
        started = time.monotonic()
        crashed_node, removed_node = ray.get([crashed.node.remote(), removed.node.remote()])
        print(f"v2: two nodes from zero in {time.monotonic() - started:.1f} s")
        cluster.kill_node(crashed_node)
        cluster.remove_node(removed_node)
        cluster.wait_node_dead(crashed_node)
        assert death(removed_node) == ("AUTOSCALER_DRAIN_PREEMPTED", "test: preemption")
        assert death(crashed_node)[0] == "UNEXPECTED_TERMINATION"
        for actor, why in (
            (removed, "AUTOSCALER_DRAIN_PREEMPTED"),
            (crashed, "UNEXPECTED_TERMINATION"),
        ):
            with pytest.raises(ray.exceptions.ActorDiedError):
                ray.get(actor.node.remote(), timeout=30)
            assert actor_death(actor) == ("actor_died_error_context", "NODE_DIED", why)
