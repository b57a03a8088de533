"""Beyond one machine: placement across nodes, GPUs, node loss (simulated nodes).

A ``ray.cluster_utils.Cluster`` on this machine: a head with 0 CPUs, a node
of 2 CPUs, and a node of 2 CPUs declaring 2 GPUs of type T4. The session
attaches to it by address, as users do with a real cluster.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import cmlray
from cmlray import _lifecycle
from tests.clusters.simulated import simulated_cluster
from tests.support.console import Captured

pytestmark = pytest.mark.slow
SLEEP = "!echo up; sleep 300"


class Nodes:
    def __init__(self, cluster: Any, cpu: Any, gpu: Any, temp: str) -> None:
        self.cluster, self.cpu, self.gpu, self.temp = cluster, cpu, gpu, temp


@pytest.fixture(scope="module")
def nodes(no_leaks: None, captured: Captured) -> Iterator[Nodes]:
    cpu_node = {"num_cpus": 2}
    gpu_node = {"num_cpus": 2, "num_gpus": 2, "resources": {"accelerator_type:T4": 1}}
    with simulated_cluster([cpu_node, gpu_node]) as (cluster, (cpu, gpu), temp):
        # The simulated nodes share this machine's filesystem (and one Ray temp
        # dir, whose shipped copies a removed node would delete): no shipping.
        cmlray.init(address=cluster.address, console=captured.console, ship_project=False)
        try:
            yield Nodes(cluster, cpu, gpu, temp)
        finally:
            cmlray.shutdown()


def _running(workers: list[dict]) -> list[dict]:
    result = cmlray.await_workers(workers, wait_for_completion=False, timeout_seconds=120)
    assert not result["failures"], result["failures"]
    return result["workers"]


def test_workers_spread_over_both_nodes(nodes: Nodes) -> None:
    workers = _running(cmlray.launch_workers(4, cpu=1, memory=0.1, code=SLEEP))
    by_node: dict[str, int] = {}
    for worker in workers:
        by_node[worker["node_id"]] = by_node.get(worker["node_id"], 0) + 1
    assert by_node == {nodes.cpu.node_id: 2, nodes.gpu.node_id: 2}
    assert {w["ip_address"] for w in workers} == {nodes.cpu.node_ip_address}
    cmlray.stop_workers(*workers)


def test_request_no_node_fits_fails_fast_naming_the_largest(nodes: Nodes) -> None:
    with pytest.raises(
        cmlray.InfeasibleRequestError, match=r"largest node has 2 CPU, .* 2 GPU \(T4\)"
    ):
        cmlray.launch_workers(1, cpu=3, memory=0.1, code="pass")
    with pytest.raises(cmlray.InfeasibleRequestError, match=r"accelerator 'A100'"):
        cmlray.launch_workers(
            1, cpu=1, memory=0.1, nvidia_gpu=1, accelerator_label_id="A100", code="pass"
        )


def test_busy_cluster_keeps_a_worker_scheduling(nodes: Nodes) -> None:
    busy = _running(cmlray.launch_workers(4, cpu=1, memory=0.1, code=SLEEP))
    waiting = cmlray.launch_workers(1, cpu=1, memory=0.1, code="print('in')")
    (failure,) = cmlray.await_workers(waiting, timeout_seconds=1)["failures"]
    assert failure["status"] == "scheduling"
    assert failure["reason"].startswith("waiting for resources")
    assert failure["reason"].endswith("(still scheduling after 1 s)")
    cmlray.stop_workers(busy[0])
    (done,) = cmlray.await_workers(waiting, timeout_seconds=120)["workers"]
    assert done["tail"] == ["in"]
    cmlray.stop_workers(*busy)


def _visible(worker: dict) -> str:
    return json.loads(worker["tail"][0])


def test_gpu_workers_see_exactly_their_gpu(nodes: Nodes) -> None:
    code = "import json, os, time\nprint(json.dumps(os.environ['CUDA_VISIBLE_DEVICES']), flush=True)\ntime.sleep(300)"
    gpu_workers = _running(cmlray.launch_workers(2, cpu=0.5, memory=0.1, nvidia_gpu=1, code=code))
    registry = _lifecycle.require().registry
    assert registry.wait_for(lambda: all(registry.get(w["id"]).tail for w in gpu_workers), 60)
    seen = sorted(
        _visible(w) for w in cmlray.list_workers() if w["id"] in {g["id"] for g in gpu_workers}
    )
    assert seen == ["0", "1"]
    assert {w["node_id"] for w in gpu_workers} == {nodes.gpu.node_id}
    third = cmlray.launch_workers(1, cpu=0.5, memory=0.1, nvidia_gpu=1, code="pass")
    assert cmlray.await_workers(third, timeout_seconds=1)["failures"][0]["status"] == "scheduling"
    cpu_only = cmlray.launch_workers(
        1,
        cpu=0.5,
        memory=0.1,
        code="import json, os; print(json.dumps(os.environ['CUDA_VISIBLE_DEVICES']))",
    )
    (plain,) = cmlray.await_workers(cpu_only, timeout_seconds=120)["workers"]
    assert _visible(plain) == ""
    cmlray.stop_workers(*gpu_workers, *third)


def test_accelerator_label_places_on_that_node(nodes: Nodes) -> None:
    workers = cmlray.launch_workers(
        1, cpu=0.5, memory=0.1, nvidia_gpu=1, accelerator_label_id="T4", code="pass"
    )
    (done,) = cmlray.await_workers(workers, timeout_seconds=120)["workers"]
    assert done["node_id"] == nodes.gpu.node_id


def test_a_lost_node_fails_its_hundred_workers_at_once_and_returns_their_items(
    nodes: Nodes,
) -> None:
    """100 workers on a node whose raylet dies: every one ``node lost``, queue items back.

    The agent's one stream breaks once and is classified once for all of its
    workers; meanwhile workers on the other nodes start and finish.
    """
    doomed = nodes.cluster.add_node(
        num_cpus=1, resources={"accelerator_type:DOOM": 1}, temp_dir=nodes.temp
    )
    nodes.cluster.wait_for_nodes()
    q = cmlray.Queue("survive")
    q.put_many(range(40))
    q.close()
    serve = "import time, cmlray.worker\ncmlray.worker.serve('survive', lambda x: (time.sleep(0.5), x)[1])"
    doom = {"accelerator_label_id": "DOOM"}
    (server,) = cmlray.launch_workers(1, cpu=0.05, memory=0.1, code=serve, **doom)
    sleepers = cmlray.launch_workers(99, cpu=0.009, memory=0.01, code="!echo up; sleep 300", **doom)
    victims = [server, *sleepers]
    running = _running(victims)
    assert {w["node_id"] for w in running} == {doomed.node_id}
    registry = _lifecycle.require().registry
    assert registry.wait_until([w["id"] for w in sleepers], lambda r: "up" in r.tail, 60)
    for _ in q.as_completed(timeout=120):  # the server has finished one and holds more
        break
    nodes.cluster.remove_node(doomed, allow_graceful=False)
    elsewhere = cmlray.launch_workers(4, cpu=0.25, memory=0.1, code="print('elsewhere')")
    failures = cmlray.await_workers(victims, timeout_seconds=120)["failures"]
    assert len(failures) == 100
    assert {(f["status"], f["reason"]) for f in failures} == {("failed", "node lost")}
    assert len(cmlray.await_workers(elsewhere, timeout_seconds=120)["workers"]) == 4
    rescuers = cmlray.launch_workers(2, cpu=1, memory=0.2, code=serve)
    q.join(timeout=180)
    results = q.results()
    assert sorted(r.item for r in results) == list(range(40)) and all(r.ok for r in results)
    assert q.stats()["requeued"] >= 1
    assert len(cmlray.await_workers(rescuers, timeout_seconds=120)["workers"]) == 2


def test_files_sent_home_from_another_node_arrive_whole(nodes: Nodes, tmp_path: Path) -> None:
    """A worker on a node other than the session's sends 20 MB home, in chunks, then 3 MB
    it holds in memory (``send_bytes``: by a file of its own, as it is not on that host)."""
    target = tmp_path / "home" / "from-node.bin"
    code = (
        "import os, hashlib, cmlray.worker\n"
        "data = os.urandom(20 << 20)\n"
        "open('/tmp/cmlray-node-file', 'wb').write(data)\n"
        "print(hashlib.sha256(data).hexdigest())\n"
        f"cmlray.worker.send_file('/tmp/cmlray-node-file', {str(target)!r})\n"
        "os.unlink('/tmp/cmlray-node-file')\n"
        f"print(cmlray.worker.send_bytes(data[:3 << 20], {str(target) + '.part'!r}))\n"
        "print(cmlray.worker._home_dirs)\n"  # (not the session's host: sent, not written)
    )
    (worker,) = cmlray.await_workers(cmlray.launch_workers(1, cpu=1, memory=0.3, code=code))[
        "workers"
    ]
    assert worker["node_id"] != nodes.cluster.head_node.node_id
    digest = hashlib.sha256(target.read_bytes())
    assert digest.hexdigest() == worker["tail"][0]
    assert worker["tail"][1:] == [f"{target}.part", "[None]"]
    assert target.with_name(target.name + ".part").read_bytes() == target.read_bytes()[: 3 << 20]
