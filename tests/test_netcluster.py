"""The namespace cluster itself: hosts, isolation, faults, and that nothing is left.

One three-host cluster serves the module (``netcluster`` fixture, whose
finalizer asserts that nothing of its run is left); the teardown paths that
need their own cluster (crash, the reaper after a SIGKILLed owner, the sweep
of a dead run) use one- or two-host clusters or bare namespaces.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.clusters import netns as _netns
from tests.clusters import netns_cleanup as _netns_cleanup
from tests.clusters.netcluster import CHECKOUT, MARK, HostSpec, NamespaceCluster, skip_reason

DEADLINE_S = 60.0
CONNECT_TIMEOUT_S = 1.5

PINNED_TASKS = """
import json, sys, ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

@ray.remote(num_cpus=0)
def where():
    import importlib.util, os, sys
    return {
        "ip": ray.util.get_node_ip_address(),
        "python": sys.executable,
        "cmlray": importlib.util.find_spec("cmlray") is not None,
        "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }

ray.init(address=sys.argv[1], log_to_driver=False)
nodes = [n for n in ray.nodes() if n["Alive"]]
pinned = [
    where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
    for n in nodes
]
results = ray.get([task.remote() for task in pinned])
gpu = ray.get(where.options(num_gpus=2).remote())
print(json.dumps({"pinned": {n["NodeManagerAddress"]: r for n, r in zip(nodes, results)}, "gpu": gpu}))
"""

CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
    print("connected")
except OSError as e:
    print(f"failed: {e!r}")
"""


def connect_from(cluster: NamespaceCluster, host: str, ip: str, port: int) -> str:
    """Tries a TCP connection from inside ``host``; "connected" or "failed: <why>"."""
    done = cluster.run(
        host, [cluster.ray_python(host), "-c", CONNECT, ip, str(port), str(CONNECT_TIMEOUT_S)]
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def wait_for(condition, what: str, timeout_s: float = DEADLINE_S):  # type: ignore[no-untyped-def]
    """Polls ``condition`` until it returns something truthy; fails naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


def test_three_alive_nodes_with_their_ips_and_resources(netcluster: NamespaceCluster) -> None:
    by_ip = {n["NodeManagerAddress"]: n for n in netcluster.nodes()}
    hosts = netcluster.hosts
    assert sorted(by_ip) == sorted(h.ip for h in hosts.values())
    assert len({h.ip for h in hosts.values()}) == 3
    for name, host in hosts.items():
        resources = by_ip[host.ip]["Resources"]
        assert resources["CPU"] == 2
        assert resources.get("GPU", 0) == (2 if name == "h2" else 0)
        assert resources.get("gpu_host", 0) == (1 if name == "h2" else 0)
        assert by_ip[host.ip]["NodeName"] == name
    assert netcluster.address == f"{hosts['h0'].ip}:6379"


def test_a_task_pinned_to_each_node_runs_there_with_the_nodes_ray(
    netcluster: NamespaceCluster,
) -> None:
    # The driver runs on the session host with the test venv (which has cmlray).
    done = netcluster.run("h0", [sys.executable, "-c", PINNED_TASKS, netcluster.address])
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert sorted(seen["pinned"]) == sorted(h.ip for h in netcluster.hosts.values())
    for ip, task in seen["pinned"].items():
        assert task["ip"] == ip
        assert task["python"] == netcluster.python_rayonly
    # Ray puts the driver's sys.path on its workers, so on the session host they
    # find cmlray; on the nodes, that path leads to nothing.
    nodes = {netcluster.hosts[h].ip: h for h in ("h1", "h2")}
    assert {nodes[ip]: task["cmlray"] for ip, task in seen["pinned"].items() if ip in nodes} == {
        "h1": False,
        "h2": False,
    }
    assert seen["gpu"]["ip"] == netcluster.hosts["h2"].ip
    assert sorted(seen["gpu"]["gpus"].split(",")) == ["0", "1"]


def test_nodes_see_neither_the_checkout_nor_the_test_venv(netcluster: NamespaceCluster) -> None:
    probe = textwrap.dedent(f"""
        import os, sys
        try:
            import cmlray
            print("imported", cmlray.__file__)
        except ImportError:
            print("no cmlray")
        # covered by an empty tmpfs, or absent when it is under /tmp (private here)
        print(os.listdir({str(CHECKOUT)!r}) if os.path.exists({str(CHECKOUT)!r}) else [])
        print(os.path.exists({sys.executable!r}))
    """)
    for name in ("h1", "h2"):
        done = netcluster.run(name, [netcluster.python_rayonly, "-c", probe])
        assert done.returncode == 0, done.stderr
        assert done.stdout.split("\n")[:3] == ["no cmlray", "[]", "False"]
        write = netcluster.run(name, ["touch", str(CHECKOUT / "written-by-a-node")])
        assert write.returncode != 0  # the cover is read-only (or the dir is not there)
        assert not (CHECKOUT / "written-by-a-node").exists()
    done = netcluster.run("h0", [sys.executable, "-c", probe])
    assert done.stdout.startswith(f"imported {CHECKOUT / 'cmlray'}"), done.stdout + done.stderr


def test_each_host_has_a_private_tmp(netcluster: NamespaceCluster) -> None:
    name = f"only-on-h1-{secrets.token_hex(4)}"
    assert netcluster.run("h1", ["touch", f"/tmp/{name}"]).returncode == 0
    assert (netcluster.hosts["h1"].tmp_dir / name).exists()  # as the root namespace sees it
    for other in ("h0", "h2"):
        assert netcluster.run(other, ["test", "-e", f"/tmp/{name}"]).returncode == 1
    assert not Path("/tmp", name).exists()
    script = netcluster.hosts["h0"].tmp_dir / f"{name}.py"
    script.write_text("import os; print(os.getcwd())")
    inside = netcluster.host_path("h0", script)
    assert inside == f"/tmp/{name}.py"
    done = netcluster.run("h0", [sys.executable, inside], cwd="/tmp")
    assert done.stdout.strip() == "/tmp", done.stderr


def test_the_token_is_required_and_readable_by_root_only(netcluster: NamespaceCluster) -> None:
    token = netcluster.token_path
    assert token.stat().st_mode & 0o777 == 0o600
    assert token.parent.stat().st_mode & 0o777 == 0o700
    no_token = {"RAY_AUTH_TOKEN_PATH": "/nonexistent"}
    done = netcluster.run(
        "h0",
        [
            sys.executable,
            "-c",
            "import ray, sys; ray.init(address=sys.argv[1])",
            netcluster.address,
        ],
        env=no_token,
    )
    assert done.returncode != 0
    assert "token" in done.stderr.lower()


def test_pids_and_processes_matching_see_only_that_host(netcluster: NamespaceCluster) -> None:
    raylets = {h: netcluster.processes_matching(h, "raylet") for h in netcluster.hosts}
    assert all(len(found) >= 1 for found in raylets.values()), raylets
    for name in netcluster.hosts:
        others = set().union(*(netcluster.pids(o) for o in netcluster.hosts if o != name))
        assert not others & set(netcluster.pids(name))
    sleeper = netcluster.popen("h1", ["sleep", "300"])
    # nsenter enters the namespace just after it starts: wait for that.
    wait_for(lambda: sleeper.pid in netcluster.pids("h1"), "the sleeper on h1")
    assert sleeper.pid not in netcluster.pids("h0")
    sleeper.kill()
    sleeper.wait()
    assert sleeper.pid not in netcluster.pids("h1")


def test_partition_cuts_a_host_off_and_heal_restores_it(netcluster: NamespaceCluster) -> None:
    h1 = netcluster.hosts["h1"]
    port = next(n["NodeManagerPort"] for n in netcluster.nodes() if n["NodeName"] == "h1")
    assert connect_from(netcluster, "h0", h1.ip, port) == "connected"
    netcluster.partition("h1")
    try:
        assert connect_from(netcluster, "h0", h1.ip, port).startswith("failed")
        assert connect_from(netcluster, "h2", h1.ip, port).startswith("failed")
        h2_port = next(n["NodeManagerPort"] for n in netcluster.nodes() if n["NodeName"] == "h2")
        assert connect_from(netcluster, "h0", netcluster.hosts["h2"].ip, h2_port) == "connected"
    finally:
        netcluster.heal("h1")
    wait_for(lambda: connect_from(netcluster, "h0", h1.ip, port) == "connected", "healed link")


def test_crash_kills_a_host_and_close_leaves_nothing() -> None:
    if reason := skip_reason():
        pytest.skip(reason)
    cluster = NamespaceCluster((HostSpec("h0", sees_checkout=True), HostSpec("h1")))
    with cluster:
        assert cluster.pids("h1")
        cluster.crash("h1")
        assert cluster.pids("h1") == []
        assert [n["NodeName"] for n in cluster.wait_nodes(1, timeout_s=DEADLINE_S)] == ["h0"]
        assert cluster.pids("h0")
        cluster.start_ray("h1")  # the host reboots
        assert sorted(n["NodeName"] for n in cluster.wait_nodes(2)) == ["h0", "h1"]
    assert cluster.leftovers() == []
    assert not Path(f"/run/netns/{cluster.layout.netns('h0')}").exists()


def test_a_sigkilled_owner_is_cleaned_up_by_its_reaper() -> None:
    if reason := skip_reason():
        pytest.skip(reason)
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER],
        cwd=CHECKOUT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        run_id = owner.stdout.readline().strip()  # type: ignore[union-attr]
        assert run_id, "the owner did not start its cluster"
        layout = _netns.Layout.load(run_id)
        assert _netns_cleanup.leftovers(layout)
        assert _netns.marked_pids(f"{MARK}={run_id}")
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    wait_for(lambda: not _netns_cleanup.leftovers(layout), "the reaper's teardown")
    wait_for(lambda: not _netns.marked_pids(f"{MARK}={run_id}"), "the run's processes to end")


OWNER = """
import sys, time
from tests.clusters.netcluster import HostSpec, NamespaceCluster
cluster = NamespaceCluster((HostSpec("h0", sees_checkout=True),))
cluster.start()
print(cluster.run_id, flush=True)
time.sleep(600)
"""


def test_sweep_removes_a_run_whose_owner_is_dead() -> None:
    if reason := skip_reason():
        pytest.skip(reason)
    layout = _netns.Layout(secrets.token_hex(3), ("h0",))
    _netns.create_run(layout)
    try:
        _netns.add_host(layout, "h0", "10.213.0.1", 24, [])
        (layout.run_dir / "owner").write_text("1 0\n")  # pid 1 did not start at tick 0
        enter = [f"--net=/run/netns/{layout.netns('h0')}", f"--mount={layout.mnt_file('h0')}"]
        sleeper = subprocess.Popen(["nsenter", *enter, "sleep", "300"])
        wait_for(lambda: _netns.netns_pids(layout.netns("h0")), "the sleeper in its namespace")
        assert layout.run_id in _netns_cleanup.sweep()
        assert sleeper.wait(timeout=DEADLINE_S) == -signal.SIGKILL
        assert _netns_cleanup.leftovers(layout) == []
    finally:
        _netns_cleanup.teardown(layout)
