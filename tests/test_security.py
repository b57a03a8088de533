"""Security: token auth on, private token, no dashboard, no secret printed."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time

import psutil
import pytest

import cmlray
from cmlray import _lifecycle
from tests.support.console import Captured
from tests.support.heads import HEAD_EXTRAS, head_commands

pytestmark = pytest.mark.usefixtures("session")
SECRET = "s3cr3t-Value-0f-the-user"


def test_own_head_uses_token_auth_with_a_private_token() -> None:
    head = _lifecycle.require().head
    assert head.owns_head and head.temp_dir is not None
    token = os.environ["RAY_AUTH_TOKEN_PATH"]
    assert os.environ["RAY_AUTH_MODE"] == "token"
    assert token.startswith(head.temp_dir + os.sep)
    assert stat.S_IMODE(os.stat(os.path.dirname(token)).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(token).st_mode) == 0o600
    with open(token) as f:
        assert len(f.read()) == 64


def test_no_dashboard_and_no_unused_head_service_runs() -> None:
    """No dashboard, and none of the services cmlray does not use (``_headservices``)."""
    temp_dir = _lifecycle.require().head.temp_dir
    assert temp_dir is not None
    commands = [cmdline for _, cmdline in head_commands(temp_dir)]
    assert any("gcs_server" in c for c in commands) and any("raylet" in c for c in commands)
    assert [c for c in commands if any(extra in c for extra in HEAD_EXTRAS)] == []
    # nor Ray's task events, which only the state API and the dashboard read
    from ray._private.state import state

    config = state.get_system_config()
    assert config["task_events_report_interval_ms"] == 0
    # and a raylet socket not ready yet is tried again soon, not a second later
    assert config["raylet_client_connect_timeout_milliseconds"] == 20
    # and no Python worker prestarted (the node agent is a process of the session)
    raylet = next(c for c in commands if "raylet/raylet" in c)
    assert "--num_prestart_python_workers=0 " in raylet + " "


def test_the_raylet_waits_for_no_agent_and_the_agents_start_behind() -> None:
    """Every agent port given (``_rayletcommand``): the runtime env agent's held, then served."""
    head = _lifecycle.require().head
    assert head.temp_dir is not None and len(head.held_ports) == 1
    port = head.held_ports[0].getsockname()[1]
    raylet = next(p for p, c in head_commands(head.temp_dir) if "raylet/raylet" in c)
    flags = set(raylet.cmdline())
    assert {"--metrics-agent-port=-1", "--metrics_export_port=-1"} <= flags
    assert {"--dashboard_agent_listen_port=-1", f"--runtime_env_agent_port={port}"} <= flags
    agents = {}
    deadline = time.monotonic() + 60
    while len(agents) < 2 or not _listens(agents["ray::RuntimeEnvAgent"], port):
        assert time.monotonic() < deadline, f"agents {agents}; none listens on {port}"
        time.sleep(0.1)
        agents = {" ".join(p.cmdline()).strip(): p for p in raylet.children()}
        agents = {
            t: p for t, p in agents.items() if t == "ray::RuntimeEnvAgent" or "_dashboardstub" in t
        }
    assert agents["ray::RuntimeEnvAgent"].nice() == 19
    # The dashboard agent, which serves nothing without the dashboard: a stand-in.
    (stub,) = [p for t, p in agents.items() if "_dashboardstub" in t]
    assert stub.cmdline()[1:3] == ["-I", "-S"] and not stub.children()


def _listens(proc: psutil.Process, port: int) -> bool:
    return any(c.status == "LISTEN" and c.laddr.port == port for c in proc.net_connections("tcp"))


def _cmlray_helpers() -> list[psutil.Process]:
    """This session's own helper processes (not another test process's, which may end meanwhile)."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            cmdline = " ".join(proc.cmdline())
            if any(f"cmlray.{name}" in cmdline for name in ("_guard", "_forkserver", "_reaper")):
                found.append(proc)
    return found


def test_cmlray_own_processes_open_no_network_socket() -> None:
    workers = cmlray.launch_workers(2, cpu=0.25, memory=0.1, code="!echo up; sleep 300")
    cmlray.await_workers(workers, wait_for_completion=False)
    helpers = _cmlray_helpers()
    assert len(helpers) >= 4  # two guards (forks of the agent's fork server), it, the reaper
    for proc in helpers:
        assert proc.net_connections(kind="inet") == [], proc.cmdline()
    cmlray.stop_workers(*workers)


def test_secrets_in_env_are_never_printed(captured: Captured) -> None:
    workers = cmlray.launch_workers(
        1, cpu=0.25, memory=0.1, code="print('done')", env={"API_TOKEN": SECRET}
    )
    result = cmlray.await_workers(workers)
    stopped = cmlray.stop_workers(*workers)
    shown = json.dumps([result, cmlray.list_workers(), [s.json() for s in stopped]]) + repr(stopped)
    assert SECRET not in shown
    assert SECRET not in captured.text()
    with pytest.raises(ValueError) as info:
        cmlray.launch_workers(1, cpu=0.25, memory=0.1, code="pass", env={"CDSW_ENGINE_ID": SECRET})
    assert SECRET not in str(info.value)
