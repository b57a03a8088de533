"""A Ray cluster of several nodes on this machine (Ray's ``cluster_utils.Cluster``).

Each node is a raylet of its own sharing this machine's filesystem: enough
to test placement across nodes, GPUs declared by a node, and a node lost
(its raylet killed), in seconds. Token auth on, with a token of its own; the
head declares a removed node dead after 5 failed health checks 1 s apart
(Ray's default: 3 s apart), so node loss is seen in seconds. Everything it
made goes at the end: its processes (by the files they hold in its temp
dir, never ``ray stop``), its temp dir, Ray's address marker if it made it.
Used by tests/test_cluster.py and benchmarks/scale.py.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import psutil

from cmlray import _head, _procfs

FAST_NODE_DEATH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "5"}


def kill_holders(temp: str) -> None:
    """End every process holding a file in ``temp`` (the cluster's own), by pid."""
    procs = []
    for pid in _procfs.holders_of(temp):
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(pid))
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(procs, timeout=10)


@contextlib.contextmanager
def simulated_cluster(nodes: list[dict[str, Any]]) -> Iterator[tuple[Any, list[Any], str]]:
    """A head of 0 CPU and one node per ``add_node`` keyword dict: ``(cluster, nodes, temp)``."""
    from ray.cluster_utils import Cluster

    temp = tempfile.mkdtemp(prefix="cmlc-")  # short: Ray's socket paths must fit 107 bytes
    token = os.path.join(temp, "token")
    with open(token, "w") as f:
        f.write(secrets.token_hex(32))
    os.chmod(token, 0o600)
    saved = {
        k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", *FAST_NODE_DEATH)
    }
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=token, **FAST_NODE_DEATH)
    _head._refresh_ray_auth()  # this process may have imported Ray before the variables were set
    # Ray's Cluster records its address in /tmp/ray, and fails where that dir
    # does not exist yet (a fresh machine): make it, and remove what we made.
    had_ray_dir = os.path.isdir("/tmp/ray")
    os.makedirs("/tmp/ray", exist_ok=True)
    marker = "/tmp/ray/ray_current_cluster"
    had_marker = os.path.exists(marker)
    cluster = None
    try:
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "temp_dir": temp})
        added = [cluster.add_node(temp_dir=temp, **node) for node in nodes]
        cluster.wait_for_nodes()
        yield cluster, added, temp
    finally:
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.shutdown()
        kill_holders(temp)
        shutil.rmtree(temp, ignore_errors=True)
        if not had_marker:
            with contextlib.suppress(OSError):
                os.unlink(marker)
        if not had_ray_dir:
            with contextlib.suppress(OSError):
                os.rmdir("/tmp/ray")
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
