"""Elastic clusters: a session on an autoscaling Ray cluster (autoscaler v2 and v1).

Ray's real autoscaler scales nodes that are processes of this machine
(tests/clusters/autoscaling.py): a head of 0 CPU, one node type ``cpu2`` of
2 CPU and 4 GiB (0 to 2 nodes), idle nodes removed after 6 s. The session
attaches to it as to any cluster. What is checked: workers scale the
cluster up from zero and say why they wait meanwhile; a request no node type
can hold fails at once when the types are declared, and within seconds when
only the autoscaler can tell (v2); nothing of the session keeps idle nodes
up; a node removed under a running worker fails it with that reason and its
queue items go back.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

import cmlray
from cmlray import _lifecycle
from tests.clusters.autoscaling import GIB, AutoscalingCluster, autoscaling_cluster, skip_reason
from tests.support.console import Captured

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leaks")]

IDLE_TIMEOUT_S = 4.0
AGENT_IDLE_S = 2.0
TYPES = {"cpu2": {"resources": {"CPU": 2, "memory": 4 * GIB}, "max_workers": 2}}


@pytest.fixture(scope="module", params=[2, 1], ids=["v2", "v1"])
def cluster(request: pytest.FixtureRequest) -> Iterator[AutoscalingCluster]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    with autoscaling_cluster(request.param, node_types=TYPES, idle_timeout_s=IDLE_TIMEOUT_S) as c:
        yield c


@pytest.fixture
def attached(cluster: AutoscalingCluster, captured: Captured) -> Iterator[AutoscalingCluster]:
    """A session attached to the cluster, its node types undeclared."""
    cmlray.init(
        address=cluster.address,
        console=captured.console,
        ship_project=False,  # the nodes share this machine's filesystem
        agent_idle_s=AGENT_IDLE_S,
        node_types={},
    )
    try:
        yield cluster
    finally:
        cmlray.shutdown()


def _reasons_while_waiting(ids: list[str], timeout_s: float = 120) -> list[str]:
    """Every distinct reason the workers gave while scheduling, until they all run."""
    registry = _lifecycle.require().registry
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        records = [registry.get(i) for i in ids]
        for record in records:
            if record.status == "scheduling" and record.reason and record.reason not in seen:
                seen.append(record.reason)
        if all(r.status != "scheduling" for r in records):
            return seen
        time.sleep(0.05)
    raise AssertionError(f"still scheduling after {timeout_s} s; reasons seen: {seen}")


def test_workers_scale_the_cluster_up_from_zero_and_say_why_they_wait(
    attached: AutoscalingCluster,
) -> None:
    attached.wait_nodes(0, timeout_s=90)  # from zero (an earlier test's node may be idling out)
    began = time.monotonic()
    workers = cmlray.launch_workers(3, cpu=1, memory=0.5, code="print('up')")
    reasons = _reasons_while_waiting([w["id"] for w in workers])
    done = cmlray.await_workers(workers, timeout_seconds=120)
    print(
        f"v{attached.version}: 3 workers from zero nodes done in {time.monotonic() - began:.1f} s"
    )
    assert [w["tail"] for w in done["workers"]] == [["up"]] * 3, done["failures"]
    assert any(r.startswith("waiting for a node: the autoscaler is starting") for r in reasons), (
        reasons
    )
    assert {w["node_id"] for w in done["workers"]} <= {
        n.node_id.hex() for n in attached.alive_worker_nodes()
    }


def test_idle_nodes_scale_down_with_the_session_open_and_up_again(
    attached: AutoscalingCluster,
) -> None:
    first = cmlray.launch_workers(1, cpu=1, memory=0.5, code="print('one')")
    finished = cmlray.await_workers(first, timeout_seconds=120)
    assert len(finished["workers"]) == 1, finished["failures"]
    ended = time.monotonic()
    attached.wait_nodes(0, timeout_s=IDLE_TIMEOUT_S + AGENT_IDLE_S + 60)
    gone_s = time.monotonic() - ended
    print(f"v{attached.version}: the idle node went {gone_s:.1f} s after its worker ended")
    again = cmlray.launch_workers(1, cpu=1, memory=0.5, code="print('again')")
    (done,) = cmlray.await_workers(again, timeout_seconds=120)["workers"]
    assert done["tail"] == ["again"]


def test_a_request_no_node_type_holds(attached: AutoscalingCluster, captured: Captured) -> None:
    """Undeclared types: v2's autoscaler says it is infeasible (fails in seconds); v1 cannot.

    (A session that has seen a node of a type knows that type's resources:
    from zero nodes, and a session of its own, it knows none.)
    """
    attached.wait_nodes(0, timeout_s=90)
    cmlray.shutdown()
    cmlray.init(address=attached.address, console=captured.console, ship_project=False,
                node_types={})  # fmt: skip
    began = time.monotonic()
    (worker,) = cmlray.launch_workers(1, cpu=8, memory=0.5, code="print('never')")
    if attached.version == 2:
        (failure,) = cmlray.await_workers(worker, timeout_seconds=60)["failures"]
        print(f"v2: an infeasible request failed after {time.monotonic() - began:.1f} s")
        assert failure["status"] == "failed"
        assert failure["reason"].startswith("infeasible: no alive node and no node type"), failure
    else:
        (failure,) = cmlray.await_workers(worker, timeout_seconds=5)["failures"]
        assert failure["status"] == "scheduling"
        assert "does not say which nodes it may add" in failure["reason"], failure["reason"]
        cmlray.stop_workers(worker)
    # Declared, the node types make the same request fail at once, naming the largest.
    cmlray.shutdown()
    cmlray.init(address=attached.address, console=captured.console, ship_project=False,
                node_types=TYPES)  # fmt: skip
    with pytest.raises(cmlray.InfeasibleRequestError, match=r"largest node type .* cpu2 \(2 CPU"):
        cmlray.launch_workers(1, cpu=8, memory=0.5, code="print('never')")


def test_a_node_removed_under_a_running_worker_fails_it_and_returns_its_items(
    attached: AutoscalingCluster,
) -> None:
    q = cmlray.Queue("elastic")
    q.put_many(range(8))
    q.close()
    serve = "import time, cmlray.worker\ncmlray.worker.serve('elastic', lambda x: (time.sleep(0.3), x)[1])"
    (victim,) = cmlray.launch_workers(1, cpu=2, memory=0.5, code=serve)
    (running,) = cmlray.await_workers(victim, wait_for_completion=False, timeout_seconds=120)[
        "workers"
    ]
    for _ in q.as_completed(timeout=120):  # it has finished one and holds the next
        break
    attached.remove_node(running["node_id"], "preemption")
    (failure,) = cmlray.await_workers(victim, timeout_seconds=60)["failures"]
    assert failure["status"] == "failed"
    assert failure["reason"].startswith("node removed"), failure["reason"]
    rescuer = cmlray.launch_workers(1, cpu=2, memory=0.5, code=serve)
    q.join(timeout=180)
    results = q.results()
    assert sorted(r.item for r in results) == list(range(8)) and all(r.ok for r in results)
    assert q.stats()["requeued"] >= 1
    assert len(cmlray.await_workers(rescuer, timeout_seconds=120)["workers"]) == 1
