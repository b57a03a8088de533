"""``_rayletcommand``: the raylet's command for a minimal head, and the port held for its agent."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator

import pytest

from cmlray import _rayletcommand
from cmlray._rayletcommand import minimal_raylet, reserve_port

NICE = shutil.which("nice")
RAYLET = [
    "/ray/raylet",
    "--node_ip_address=127.0.0.1",
    "--min_worker_port=0",
    "--max_worker_port=0",
    "--metrics-agent-port=0",
    "--metrics_export_port=0",
    "--runtime_env_agent_port=0",
    "--num_prestart_python_workers=4",
    "--python_worker_command=/py default_worker.py --runtime-env-agent-port=0",
    "--dashboard_agent_command=/py /ray/dashboard/agent.py --grpc-port=0 --minimal",
    "--runtime_env_agent_command=/py /ray/agent/main.py --runtime-env-agent-port=0 --x=1",
]  # the shape of ray.init's (ray/_private/services.py: start_raylet)


@pytest.fixture
def held() -> Iterator[list[socket.socket]]:
    sockets: list[socket.socket] = []
    yield sockets
    for holder in sockets:
        holder.close()


STUB = os.path.join(os.path.dirname(_rayletcommand.__file__), "_dashboardstub.py")


def test_every_agent_port_is_given_and_the_agents_start_behind(held: list[socket.socket]) -> None:
    assert NICE is not None  # (coreutils: the test machines have it)
    command = minimal_raylet(RAYLET, held)
    (holder,) = held
    address, port = holder.getsockname()
    assert address == "127.0.0.1" and 20000 <= port < _rayletcommand._ephemeral_low()
    assert command == [
        "/ray/raylet",
        "--node_ip_address=127.0.0.1",
        "--min_worker_port=0",
        "--max_worker_port=0",
        "--metrics-agent-port=-1",
        "--metrics_export_port=-1",
        f"--runtime_env_agent_port={port}",
        "--num_prestart_python_workers=0",
        "--python_worker_command=/py default_worker.py --runtime-env-agent-port=0",
        f"--dashboard_agent_command=/py -I -S {STUB}",
        f"--runtime_env_agent_command={NICE} -n 19 /py /ray/agent/main.py"
        f" --runtime-env-agent-port={port} --x=1",
        "--dashboard_agent_listen_port=-1",
    ]


def test_the_held_port_is_refused_to_others_and_free_for_the_agent(
    held: list[socket.socket],
) -> None:
    minimal_raylet(RAYLET, held)
    port = held[0].getsockname()[1]
    with socket.socket() as other, pytest.raises(OSError):
        other.bind(("127.0.0.1", port))  # a program without SO_REUSEADDR
    with socket.socket() as agent:  # as ray/_private/runtime_env/agent/main.py binds
        agent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        agent.bind(("127.0.0.1", port))
        agent.listen()


def test_a_taken_port_is_never_chosen() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        assert reserve_port("127.0.0.1", port, port + 1) is None
    holder = reserve_port("127.0.0.1", port, port + 1)
    assert holder is not None and holder.getsockname()[1] == port
    holder.close()


def test_without_a_port_to_hold_the_raylet_waits_for_the_runtime_env_agent_as_ray_does(
    held: list[socket.socket],
) -> None:
    full = [a.replace("--max_worker_port=0", "--max_worker_port=65535") for a in RAYLET]
    command = minimal_raylet(full, held)
    assert held == []
    assert "--runtime_env_agent_port=0" in command
    assert RAYLET[-1] in command  # the runtime env agent unchanged: waited for, not behind
    assert "--dashboard_agent_listen_port=-1" in command and "--metrics-agent-port=-1" in command
