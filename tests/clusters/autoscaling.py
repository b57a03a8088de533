"""Autoscaling Ray clusters whose nodes are processes on this machine (autoscaler v1 or v2).

Ray's fake multi-node provider starts each "node" (a raylet and its agents)
from the autoscaler's monitor process, so Ray's real autoscaler scales real
raylets. Ray's harness (``ray.cluster_utils.AutoscalingCluster``) does not fit:
it runs ``ray stop --force`` (every Ray here, other test processes' too) and
its base config is not in the wheel. A cluster here has a private dir and its
own ports (a v1 and a v2 run at once), token auth for all it starts,
``memory`` in node types (``MemoryFakeProvider``: the monitor imports this
module, the head having the checkout on ``PYTHONPATH``), and ``MARK=<id>`` in
the environment of every process, by which ``close()`` ends them by pid.

    with autoscaling_cluster(2) as cluster:  # this process is its client inside
        ray.init(address=cluster.address)
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import psutil
import ray
from ray.autoscaler._private.fake_multi_node.node_provider import (
    FAKE_HEAD_NODE_ID,
    FakeMultiNodeProvider,
)
from ray.autoscaler.tags import TAG_RAY_NODE_KIND, TAG_RAY_NODE_NAME, TAG_RAY_NODE_STATUS
from ray.autoscaler.tags import TAG_RAY_USER_NODE_TYPE as TAG_TYPE

CHECKOUT = Path(__file__).resolve().parents[2]
MARK = "CMLRAY_AUTOSCALING_CLUSTER"
HEAD_TYPE = "ray.head.default"
GIB = 1024**3
OBJECT_STORE_BYTES = 100 * 1024**2  # a node's, unless its type says (Ray's: 30% of RAM)
START_TIMEOUT_S = 90.0
# A SIGKILLed raylet is declared dead after 5 missed 1 s health checks (Ray: 5 x 3 s).
FAST_FAULT_DETECTION = {
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "2000",
    "RAY_health_check_failure_threshold": "5",
}
# What v1's autoscaler reads without a default (Ray's fake example.yaml has it).
V1_REQUIRED_FIELDS: dict[str, Any] = {
    "auth": {}, "docker": {}, "file_mounts": {}, "file_mounts_sync_continuously": False,
    **{key: [] for key in (
        "cluster_synced_files", "rsync_exclude", "rsync_filter", "initialization_commands",
        "setup_commands", "head_setup_commands", "worker_setup_commands",
        "head_start_ray_commands", "worker_start_ray_commands",
    )},
}  # fmt: skip
DEFAULT_NODE_TYPES: dict[str, dict[str, Any]] = {
    "cpu2": {"resources": {"CPU": 2, "memory": 4 * GIB}, "min_workers": 0, "max_workers": 2},
}


def skip_reason() -> str | None:
    """Why such a cluster cannot run here, or None when it can."""
    if not sys.platform.startswith("linux"):
        return "the autoscaling cluster finds its processes in /proc (Linux only)"
    if not (Path(sys.executable).parent / "ray").exists():
        return f"no ray CLI beside {sys.executable}"
    return None


class MemoryFakeProvider(FakeMultiNodeProvider):  # type: ignore[misc]
    """Ray's fake provider, but a node type's ``memory`` becomes the node's memory.

    As shipped it passes ``memory`` on in ``resources=`` and Ray refuses to
    start the node; this copy of its node creation passes ``RayParams(memory=)``,
    a small object store, and the label ``ray.io/node-group=<type>`` (Ray takes
    it from ``RAY_NODE_TYPE_NAME`` of the process starting the raylet: the
    monitor, which has the head's).
    """

    def _create_node_with_resources_and_labels(
        self, node_config: Any, tags: dict[str, str], count: int, resources: Any, labels: Any
    ) -> None:
        from ray._private.node import Node
        from ray._private.parameter import RayParams

        resources = dict(resources)
        with self.lock:
            node_type, node_id = tags[TAG_TYPE], self._next_hex_node_id()
            params = RayParams(
                min_worker_port=0, max_worker_port=0, dashboard_port=None,
                dashboard_agent_listen_port=0,
                num_cpus=resources.pop("CPU", 0), num_gpus=resources.pop("GPU", 0),
                memory=resources.pop("memory", None),
                object_store_memory=resources.pop("object_store_memory", OBJECT_STORE_BYTES),
                resources=resources, labels={"ray.io/node-group": node_type, **labels},
                redis_address=self._gcs_address, gcs_address=self._gcs_address,
                env_vars={"RAY_OVERRIDE_NODE_ID_FOR_TESTING": node_id,
                          "RAY_CLOUD_INSTANCE_ID": node_id, "RAY_NODE_TYPE_NAME": node_type},
            )  # fmt: skip
            node = Node(params, head=False, shutdown_at_exit=False, spawn_reaper=False)
            own = {TAG_RAY_NODE_KIND: "worker", TAG_RAY_NODE_NAME: node_id}
            own |= {TAG_TYPE: node_type, TAG_RAY_NODE_STATUS: "up-to-date"}
            self._nodes[node_id] = {"tags": own | tags, "node": node}


class AutoscalingCluster:
    """A head (``ray start --head``) whose autoscaler starts nodes as local processes.

    Args:
        version: The autoscaler, 1 or 2.
        node_types: Worker node types, name -> ``{"resources": {...}, "min_workers": n,
            "max_workers": m}`` (``memory`` in bytes).
        head_cpus: The head's CPUs (0: every task needs a worker node).
        idle_timeout_s: How long a worker node may idle before it goes (fractions of a
            minute work in v1 and v2).
    """

    def __init__(
        self,
        version: int,
        *,
        node_types: dict[str, dict[str, Any]] | None = None,
        head_cpus: int = 0,
        idle_timeout_s: float = 15.0,
    ) -> None:
        if version not in (1, 2):
            raise ValueError(f"the autoscaler is version 1 or 2, not {version!r}")
        self.version, self.head_cpus, self.idle_timeout_s = version, head_cpus, idle_timeout_s
        self.node_types: dict[str, Any] = json.loads(json.dumps(node_types or DEFAULT_NODE_TYPES))
        self.run_id = secrets.token_hex(4)
        # Short, never pytest's: Ray's socket paths under it must fit AF_UNIX's 107 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="cmlray-as-"))
        self.token_path = self.root / "auth" / "token"
        self.address = f"{ray.util.get_node_ip_address()}:{_free_port()}"
        self.start_s = 0.0
        self.session_id = -1  # that of every process it starts

    def client_env(self) -> dict[str, str]:
        """What a client (driver, ``GcsClient``, ``ray`` CLI) of this cluster needs."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path)}

    @contextlib.contextmanager
    def as_client(self) -> Iterator[None]:
        """Within this block this process is a client of this cluster (its token).

        Ray caches the token once per process: the cache is dropped when the
        environment changes, on the way in and out, so a test process can use
        two clusters in turn. Shut a driver down before the block ends.
        """
        wanted = self.client_env()
        saved = {key: os.environ.get(key) for key in wanted}
        if saved == wanted:  # nested, or under a driver: a reset would reset its config
            yield
            return
        _set_env(wanted)
        try:
            yield
        finally:
            _set_env(saved)

    def start(self) -> None:
        """Starts the head (and so its autoscaler); waits until the GCS answers and v1 reports."""
        started = time.monotonic()
        self.token_path.parent.mkdir(mode=0o700)
        fd = os.open(self.token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        config = self.root / "autoscaling.json"
        config.write_text(json.dumps(self.autoscaling_config(), indent=2))
        argv = [
            str(Path(sys.executable).parent / "ray"), "start", "--head",
            f"--port={self.address.rsplit(':', 1)[1]}", f"--temp-dir={self.root / 'ray'}",
            "--include-dashboard=false", f"--dashboard-port={_free_port()}",
            "--dashboard-agent-listen-port=0", "--disable-usage-stats",
            f"--num-cpus={self.head_cpus}", f"--memory={GIB}",
            f"--object-store-memory={OBJECT_STORE_BYTES}", f"--autoscaling-config={config}",
        ]  # fmt: skip
        log = self.root / "ray-start.log"
        with log.open("wb") as out:  # a session of its own: see processes()
            ray_start = subprocess.Popen(
                argv, env=self.head_env(), stdout=out, stderr=subprocess.STDOUT,
                cwd=self.root, start_new_session=True,
            )  # fmt: skip
        self.session_id = ray_start.pid  # if it hangs, close() ends it with the rest
        if ray_start.wait(timeout=START_TIMEOUT_S) != 0:
            raise RuntimeError(f"ray start --head failed:\n{log.read_text()[-3000:]}")
        self.wait_nodes(0)
        if self.version == 1:  # ready once v1's monitor has reported (a session reads it)
            _wait(self.v1_status, "the v1 autoscaler's first report", START_TIMEOUT_S)
        self.start_s = time.monotonic() - started

    def autoscaling_config(self) -> dict[str, Any]:
        """The config the head's monitor reads (JSON is YAML); Ray fills in the rest."""
        types = {name: {"min_workers": 0, **spec} for name, spec in self.node_types.items()}
        types[HEAD_TYPE] = {"resources": {"CPU": self.head_cpus, "memory": GIB}, "max_workers": 0}
        for spec in types.values():
            spec["node_config"] = {}
        provider = {
            "type": "external", "module": f"{__name__}.MemoryFakeProvider",
            "gcs_address": self.address, "head_node_id": FAKE_HEAD_NODE_ID,
            "launch_multiple": True,  # else one node per launch, whatever the count
            "use_node_id_as_ip": True, "disable_node_updaters": True,
            "disable_launch_config_check": True,
        }  # fmt: skip
        return V1_REQUIRED_FIELDS | {
            "cluster_name": f"cmlray-{self.run_id}",
            "max_workers": sum(spec["max_workers"] for spec in types.values()),
            "provider": provider,
            "available_node_types": types,
            "head_node_type": HEAD_TYPE,
            "idle_timeout_minutes": self.idle_timeout_s / 60,
            "upscaling_speed": 1.0,
        }

    def head_env(self) -> dict[str, str]:
        """The head's environment, which its monitor, nodes and workers inherit."""
        base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        path = os.pathsep.join(p for p in (str(CHECKOUT), base.get("PYTHONPATH")) if p)
        env = base | self.client_env() | FAST_FAULT_DETECTION
        env |= {
            MARK: self.run_id,
            "PYTHONPATH": path,
            "RAY_FAKE_CLUSTER": "1",
            "AUTOSCALER_UPDATE_INTERVAL_S": "1",
            "AUTOSCALER_METRIC_PORT": str(_free_port()),
            "RAY_enable_autoscaler_v2": str(int(self.version == 2)),
            "RAY_NODE_TYPE_NAME": HEAD_TYPE,  # the head's label ray.io/node-group
        }
        if self.version == 2:  # as ray.cluster_utils.AutoscalingCluster has it
            env |= dict.fromkeys(
                ["RAY_CLOUD_INSTANCE_ID", "RAY_OVERRIDE_NODE_ID_FOR_TESTING"], FAKE_HEAD_NODE_ID
            )
        return env

    def gcs_nodes(self) -> list[Any]:
        """Every node the GCS knows, dead ones too (``GcsNodeInfo`` protos)."""
        with self.as_client():
            return list(self._gcs().get_all_node_info(timeout=10).values())

    def alive_worker_nodes(self) -> list[Any]:
        """The alive nodes other than the head (``GcsNodeInfo`` protos)."""
        nodes = self.gcs_nodes()
        return [n for n in nodes if n.state == n.GcsNodeState.ALIVE and not n.is_head_node]

    def wait_nodes(self, count: int, timeout_s: float = START_TIMEOUT_S) -> list[Any]:
        """Waits until exactly ``count`` worker nodes are alive; returns them."""

        def alive() -> list[Any] | None:
            nodes = self.alive_worker_nodes()
            return nodes if len(nodes) == count else None

        return _wait(alive, f"{count} alive worker nodes", timeout_s)  # type: ignore[no-any-return]

    def wait_node_dead(self, node_id: str, timeout_s: float = 30.0) -> Any:
        """Waits until the GCS has node ``node_id`` (hex) dead; returns its ``GcsNodeInfo``."""

        def dead() -> Any:
            nodes = [n for n in self.gcs_nodes() if n.node_id.hex() == node_id]
            return next((n for n in nodes if n.state != n.GcsNodeState.ALIVE), None)

        return _wait(dead, f"node {node_id} dead", timeout_s)

    def autoscaling_state(self) -> Any:
        """The GCS's ``GetClusterStatusReply``: v2's ``autoscaling_state`` (pending and
        infeasible requests; empty with v1) and ``cluster_resource_state``."""
        from ray.core.generated.autoscaler_pb2 import GetClusterStatusReply

        with self.as_client():
            return GetClusterStatusReply.FromString(self._gcs().get_cluster_status(timeout_s=10))

    def v1_status(self) -> dict[str, Any] | None:
        """The v1 monitor's last report (KV ``__autoscaling_status``); None with v2."""
        with self.as_client():
            raw = self._gcs().internal_kv_get(b"__autoscaling_status", None, timeout=10)
        return json.loads(raw) if raw else None

    def processes(self) -> list[psutil.Process]:
        """This cluster's live processes: those of its ``ray start``'s session, or marked.

        The mark alone can miss some: Ray's agents write their title over the
        start of their environment (``setproctitle``), ``MARK`` included.
        """
        return _processes(self.session_id, f"{MARK}={self.run_id}")

    def raylet_of(self, node_id: str) -> psutil.Process:
        """The raylet process of node ``node_id`` (hex)."""
        for proc in self.processes():
            with contextlib.suppress(psutil.Error):
                if proc.name() == "raylet" and f"--node_id={node_id}" in proc.cmdline():
                    return proc
        raise LookupError(f"no raylet of node {node_id} in this cluster")

    def kill_node(self, node_id: str) -> None:
        """SIGKILLs the node's raylet as a crash would: ``UNEXPECTED_TERMINATION`` ~5 s on."""
        self.raylet_of(node_id).kill()

    def remove_node(
        self, node_id: str, reason: Literal["preemption", "idle"] = "preemption"
    ) -> Any:
        """Removes a node as an autoscaler does: drains it, then its raylet ends.

        ``preemption``: a drain with a deadline, SIGTERM after it (before it
        Ray says ``EXPECTED_TERMINATION``): ``AUTOSCALER_DRAIN_PREEMPTED``.
        ``idle`` (Ray refuses it for a busy node): the raylet exits by itself,
        ``AUTOSCALER_DRAIN_IDLE``. Returns the dead node's ``GcsNodeInfo``.
        """
        from ray.core.generated.autoscaler_pb2 import DrainNodeReason

        why = "PREEMPTION" if reason == "preemption" else "IDLE_TERMINATION"
        deadline_ms = int(time.time() * 1000) + 200 if reason == "preemption" else 0
        with self.as_client():
            code, message = DrainNodeReason.Value(f"DRAIN_NODE_REASON_{why}"), f"test: {reason}"
            accepted, refusal = self._gcs().drain_node(node_id, code, message, deadline_ms)
        if not accepted:
            raise RuntimeError(f"Ray refused to drain node {node_id}: {refusal}")
        if reason == "preemption":
            time.sleep(max(0.0, deadline_ms / 1000 - time.time()) + 0.1)
            self.raylet_of(node_id).terminate()
        return self.wait_node_dead(node_id)

    def close(self) -> None:
        """Shuts down a driver of this process on it, SIGKILLs its processes (looking again:
        a raylet may start a worker meanwhile), removes its dir; idempotent."""
        if ray.is_initialized() and ray.get_runtime_context().gcs_address == self.address:
            with self.as_client():
                ray.shutdown()
        deadline = time.monotonic() + 15
        while (left := self.processes()) and time.monotonic() < deadline:
            for proc in left:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            psutil.wait_procs(left, timeout=2)
        shutil.rmtree(self.root, ignore_errors=True)
        if left := self.processes():
            raise RuntimeError(f"autoscaling cluster left: {[p.pid for p in left]}")

    def _gcs(self) -> Any:
        return ray._raylet.GcsClient(address=self.address)


@contextlib.contextmanager
def autoscaling_cluster(version: int, **options: Any) -> Iterator[AutoscalingCluster]:
    """A started cluster (``options`` as ``AutoscalingCluster``'s), this process its
    client until the block ends; closed after."""
    cluster = AutoscalingCluster(version, **options)
    try:
        cluster.start()
        with cluster.as_client():
            yield cluster
    finally:
        cluster.close()


def _wait(probe: Callable[[], Any], what: str, timeout_s: float) -> Any:
    """Calls ``probe`` until it returns something (not None, no exception) or time is up."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            got, error = probe(), None
        except Exception as e:  # the GCS may not answer yet
            got, error = None, e
        if got is not None:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout_s} s (last error: {error!r})")
        time.sleep(0.2)


def _set_env(values: Mapping[str, str | None]) -> None:
    """Sets (None: unsets) variables, then has Ray read its auth mode and token again."""
    from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]

    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def _processes(session_id: int, mark: str) -> list[psutil.Process]:
    """Live processes (not this one) of session ``session_id`` or with ``mark`` in their env."""
    found = []
    for proc in psutil.process_iter():
        try:
            ours = os.getsid(proc.pid) == session_id
            if not ours:
                with open(f"/proc/{proc.pid}/environ", "rb") as f:
                    ours = mark.encode() in f.read().split(b"\0")
            if ours and proc.pid != os.getpid() and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (OSError, psutil.Error):
            continue
    return found
