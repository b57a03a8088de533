"""``SessionConfig``: everything a session is started with, checked and resolved once.

``cmlray.init``'s arguments, the environment variables that stand in for
some of them, and what follows from both (the project dir, whether the
project is shipped to the nodes) are resolved here into one frozen value;
a :class:`~cmlray._session.Session` is built complete from it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from cmlray import _checks, _nodetypes, _shipping
from cmlray._nodetypes import NodeType

HEAD_SERVICES = ("minimal", "all")
LEASE_S = 30.0  # CMLRAY_LEASE_S overrides it: how long a cut-off node's agent waits
AGENT_IDLE_S = 5.0
RAY_CLIENT_REFUSED = (
    "address {address!r}: Ray Client (ray://) is not supported. A cmlray session must run"
    " on a node of the cluster: its node agents stream every worker's output to it, and"
    " every worker ends when it ends. Run the session on the head or on a node (a notebook"
    " there, or `ray job submit -- python your_script.py`) and attach with the cluster's"
    " GCS address (cmlray.init(address='HEAD_IP:6379'), or RAY_ADDRESS=auto on a node)"
)


@dataclass(frozen=True)
class SessionConfig:
    """A session's settings (see ``cmlray.init`` for each).

    Attributes:
        address: the cluster to attach to, or None for an own head.
        project_dir: absolute; the workers' working directory.
        runtime_env: Ray's runtime_env for the session's job, completed with
            what an attached session ships (cmlray itself, the project).
        lease_s: how long a remote node's agent waits for an unreachable session.
        agent_idle_s: how long a node's agent stays with no worker.
        node_types: the node types an autoscaler may add, as declared (``_nodetypes.py``).
    """

    address: str | None = None
    num_cpus: int | None = None
    num_gpus: int | None = None
    resources: Mapping[str, float] | None = None
    project_dir: str = ""
    console: Console | None = None
    log_dir: str | None = None
    runtime_env: Mapping[str, Any] | None = None
    head_services: str = "minimal"
    lease_s: float = LEASE_S
    agent_idle_s: float = AGENT_IDLE_S
    node_types: Mapping[str, NodeType] = field(default_factory=dict)

    @property
    def attached(self) -> bool:
        return self.address is not None

    @property
    def env_vars(self) -> dict[str, str]:
        """The ``env_vars`` of the session's ``runtime_env``: every worker's program gets them."""
        return dict((self.runtime_env or {}).get("env_vars") or {})

    @property
    def ships_project(self) -> bool:
        """Ray ships the project dir to each node; workers run in their node's copy."""
        return "working_dir" in (self.runtime_env or {})

    @classmethod
    def build(
        cls,
        address: object = None,
        num_cpus: object = None,
        num_gpus: object = None,
        resources: object = None,
        project_dir: object = None,
        *,
        console: object = None,
        log_dir: object = None,
        runtime_env: object = None,
        ship_project: object = True,
        project_excludes: object = (),
        head_services: object = "minimal",
        agent_idle_s: object = AGENT_IDLE_S,
        node_types: object = None,
    ) -> SessionConfig:
        """Check ``cmlray.init``'s arguments and resolve them with the environment."""
        if address is not None and not isinstance(address, str):
            raise TypeError(f"address must be a string such as 'host:6379', got {address!r}")
        if console is not None and not isinstance(console, Console):
            raise TypeError(f"console must be a rich.console.Console or None, got {console!r}")
        env = _checks.check_runtime_env(runtime_env)
        shipping = _checks.check_flag("ship_project", ship_project)
        excludes = _checks.check_patterns(project_excludes)
        project = os.path.abspath((env or {}).get("working_dir") or _project_dir(project_dir))
        resolved = address or os.environ.get("RAY_ADDRESS") or None
        if resolved is not None and resolved.startswith("ray://"):
            raise ValueError(RAY_CLIENT_REFUSED.format(address=resolved))
        if resolved is not None:
            env = _shipping.attached_runtime_env(
                env, project, ship_project=shipping, excludes=excludes
            )
        return cls(
            address=resolved,
            num_cpus=None if num_cpus is None else _checks.check_count("num_cpus", num_cpus, 0),
            num_gpus=None if num_gpus is None else _checks.check_count("num_gpus", num_gpus, 0),
            resources=_checks.check_resources(resources),
            project_dir=project,
            console=console,
            log_dir=_checks.check_log_dir(log_dir),
            runtime_env=env,
            head_services=_checks.check_choice("head_services", head_services, HEAD_SERVICES),
            lease_s=float(os.environ.get("CMLRAY_LEASE_S") or LEASE_S),
            agent_idle_s=_checks.check_seconds("agent_idle_s", agent_idle_s),
            node_types=_declared_types(node_types),
        )


def _declared_types(node_types: object) -> dict[str, NodeType]:
    if node_types is not None:
        return _nodetypes.parse(node_types, "node_types")
    return _nodetypes.parse(os.environ.get(_nodetypes.NODE_TYPES_ENV), _nodetypes.NODE_TYPES_ENV)


def _project_dir(project_dir: object) -> str:
    if project_dir is None:
        return os.getcwd()
    if not isinstance(project_dir, str | os.PathLike) or not os.path.isdir(project_dir):
        raise ValueError(f"project_dir must be an existing directory, got {project_dir!r}")
    return os.fspath(project_dir)
