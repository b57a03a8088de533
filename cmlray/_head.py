"""Connecting a session to Ray: its own head, or an existing cluster.

Own head (the default): ``ray.init(address="local")``, never a bare
``ray.init()`` that would silently attach to whatever cluster the machine
has recorded; no dashboard, and only the head services cmlray uses
(``_headservices``), ready as soon as its raylet has registered
(``_rayletwait``); Ray's log forwarding off (the session streams
workers' output itself); token authentication on, with a fresh token in a
private temp dir only this user can read. A reaper process tied to the
session by a pipe removes every process and file of the head once the
session's process is gone, however it ended.

Attach: given ``address`` (or ``RAY_ADDRESS``), connect to that cluster; the
cluster's own token settings (``RAY_AUTH_TOKEN``/``RAY_AUTH_TOKEN_PATH``) apply.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cmlray import (
    _headservices,
    _homeagent,
    _procfs,
    _rayletwait,
    _shipping,
    _standalone,
    _zygote,
)
from cmlray._hush import hush
from cmlray._rayerrors import is_upload_too_large, session_error
from cmlray.errors import SessionError

if TYPE_CHECKING:
    from cmlray._config import SessionConfig

_AUTH_VARIABLES = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN")


@dataclass
class Head:
    """The session's connection to Ray and what must be undone at the end."""

    address: str | None
    owns_head: bool
    temp_dir: str | None = None
    reaper: subprocess.Popen[bytes] | None = None
    saved_env: dict[str, str | None] = field(default_factory=dict)
    disconnect: bool = True
    held_ports: list[socket.socket] = field(default_factory=list)  # (_rayletcommand.py)
    home_agent: _homeagent.HomeProcess | None = None  # started with it (_homeagent.py)

    def close(self) -> None:
        """Disconnect from Ray; for an own head, end it and let the reaper sweep."""
        import ray

        if self.home_agent is not None:  # (the session's agents end it first, when it had one)
            self.home_agent.end()
        if self.disconnect:
            with contextlib.suppress(Exception):
                ray.shutdown()
        if self.reaper is not None and self.reaper.stdin is not None:
            self.reaper.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.reaper.wait(timeout=10)
        _release(self.held_ports)
        _restore_env(self.saved_env)


def _release(held: list[socket.socket]) -> None:
    for holder in held:
        holder.close()


def _restore_env(saved: dict[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _write_token(temp_dir: str) -> str:
    """A fresh token, readable by this user only, in a dir of its own.

    Not directly in Ray's temp dir: Ray opens that one to everyone (0777).
    """
    private = os.path.join(temp_dir, "private")
    os.mkdir(private, 0o700)
    path = os.path.join(private, "auth_token")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path


def _enable_token_auth(token_path: str) -> dict[str, str | None]:
    saved = {key: os.environ.get(key) for key in _AUTH_VARIABLES}
    os.environ.pop("RAY_AUTH_TOKEN", None)
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = token_path
    _refresh_ray_auth()
    return saved


def _refresh_ray_auth() -> None:
    """Make Ray re-read its auth settings (it caches them per process at import)."""
    try:
        from ray._raylet import (  # type: ignore[attr-defined]
            AuthenticationTokenLoader,
            Config,
        )

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    except (ImportError, AttributeError):
        pass


def _head_processes(temp_dir: str) -> list[list[int | None]]:
    """This process's descendants that belong to the head under ``temp_dir``."""
    holders = set(_procfs.holders_of(temp_dir))
    found = []
    for pid in _procfs.descendants(os.getpid()):
        if temp_dir.encode() in _procfs.cmdline(pid) or pid in holders:
            found.append([pid, _procfs.start_ticks(pid)])
    return found


def _start_reaper(temp_dir: str) -> subprocess.Popen[bytes]:
    head_pids = _head_processes(temp_dir)
    reaper = subprocess.Popen(
        _standalone.command("cmlray._reaper"),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )
    plan = {"pids": head_pids, "temp_dir": temp_dir, "spare": [os.getpid()]}
    assert reaper.stdin is not None
    reaper.stdin.write(json.dumps(plan).encode() + b"\n")
    reaper.stdin.flush()
    return reaper


def connect(config: SessionConfig) -> Head:
    """The session's Ray: the cluster at ``config.address``, the user's, or an own head."""
    runtime_env = dict(config.runtime_env) if config.runtime_env is not None else None
    if config.address is not None:
        return attach(config.address, runtime_env)
    ray = sys.modules.get("ray")  # (not imported yet: the home agent starts meanwhile)
    if ray is not None and ray.is_initialized():  # the user connected Ray: use that connection
        return Head(address=None, owns_head=False, disconnect=False)
    return start_own_head(
        num_cpus=config.num_cpus,
        num_gpus=config.num_gpus,
        resources=dict(config.resources) if config.resources is not None else None,
        runtime_env=runtime_env,
        head_services=config.head_services,
        home_agent=set(runtime_env or {}) <= {"env_vars"},
    )


def start_own_head(
    *,
    num_cpus: int | None,
    num_gpus: int | None,
    resources: dict[str, float] | None,
    runtime_env: dict[str, Any] | None = None,
    head_services: str = "minimal",
    home_agent: bool = False,
) -> Head:
    """Start a Ray head inside this process's session (see module docstring).

    With ``home_agent``, the process of its node's agent starts first
    (``_homeagent.py``: nothing but the workers' variables of a
    ``runtime_env`` needs Ray to prepare that agent's interpreter).
    """
    temp_dir = tempfile.mkdtemp(prefix="cmlray-")
    home = None
    if home_agent:
        with contextlib.suppress(OSError):  # (then its agent is a Ray actor)
            home = _homeagent.start(temp_dir, _zygote.workers_startup(os.environ))
    import ray

    saved = _enable_token_auth(_write_token(temp_dir))
    held: list[socket.socket] = []
    try:
        with _headservices.only(head_services) as held, _rayletwait.polled():
            context = ray.init(
                address="local",
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                resources=resources,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
                _temp_dir=temp_dir,
                _system_config=_headservices.system_config(head_services),
                runtime_env=runtime_env,
            )
    except Exception as exc:
        _release(held)
        _restore_env(saved)
        if home is not None:
            home.end()
        shutil.rmtree(temp_dir, ignore_errors=True)  # (its token, Ray's session files)
        raise session_error(exc, "starting a Ray head") from exc
    head = Head(_address_of(context), owns_head=True, temp_dir=temp_dir, held_ports=held)
    head.home_agent = home
    head.saved_env = saved
    head.reaper = _start_reaper(temp_dir)
    return head


def attach(address: str, runtime_env: dict[str, Any] | None = None) -> Head:
    """Connect to an existing Ray cluster at ``address``."""
    import ray

    _refresh_ray_auth()
    # cmlray leaves these out of the shipped project itself, and says so in its docs.
    hush("ray._private.runtime_env.working_dir", "is now ignored by default")
    try:
        context = ray.init(
            address=address,
            log_to_driver=False,
            logging_level=logging.WARNING,
            runtime_env=runtime_env,
        )
    except Exception as exc:
        with contextlib.suppress(Exception):  # connected before the upload failed
            ray.shutdown()
        if is_upload_too_large(exc) and runtime_env:
            hint = _shipping.too_large_hint(str(runtime_env.get("working_dir")))
            raise SessionError(f"{hint} ({str(exc).splitlines()[0]})") from exc
        raise session_error(exc, f"attaching to the Ray cluster at {address}") from exc
    return Head(address=_address_of(context) or address, owns_head=False)


def _address_of(context: Any) -> str | None:
    info = getattr(context, "address_info", None) or {}
    address = info.get("gcs_address") or info.get("address")
    return str(address) if address else None
