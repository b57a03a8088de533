"""The raylet's command line for an own head with the minimal services (``_headservices.only``).

Three changes to the command ``ray.init`` builds, each measured on this
2-core machine (``benchmarks/launch.py --child start-cmlray``, the builds
taking turns):

- **No prestarted Python worker, not one per CPU.** When the first driver
  connects, the raylet starts ``--num_prestart_python_workers`` idle Python
  workers for Ray tasks, and holds the driver's connection until they have
  registered (a new interpreter's ``import ray``). cmlray runs no Ray tasks.
  The others stayed idle all session (43 MiB and 0.4 s of CPU each, started
  while the session starts): one instead of one per CPU made ``init`` 1.24 s
  instead of 1.36; the first was the node agent's, until the agent of an own
  head became a process of the session (``_homeagent.py``): with none,
  ``init`` takes 0.32-0.40 s instead of 0.87-1.07 (3 runs each here), and a
  Ray worker starts only where something asks for one (a GPU worker's probe,
  ``_groups.py``; a Ray task of the user's).
- **The raylet waits for none of its agents.** Before it registers with the
  GCS (and so before ``ray.init`` can connect), the raylet waits for each of
  its two agents to write the port it bound into a file of the session dir,
  polling every 100 ms (Ray's ``WaitForPersistedPort``, skipped for a port
  given on its command line): the dashboard agent's three ports (started
  ``--minimal``, it serves none and writes -1 for each) and the runtime env
  agent's. Both are Python processes that import Ray: 0.6-0.9 s here. The
  raylet is now given -1 for the dashboard agent's ports (what it would have
  read) and, for the runtime env agent, a port held free for it (below).
- **The runtime env agent starts at the lowest priority** (``nice -n 19``,
  where ``nice`` is installed; the node agent and every Ray worker run at
  15, the workers' programs at the raylet's own): no longer waited for, it
  boots beside the session's start instead of ahead of it. It serves nothing
  cmlray needs to start: it prepares ``runtime_env``s for Ray workers. The
  minimal dashboard agent serves nothing at all: since an own head's node
  agent became a process of the session and ``init`` stopped waiting for a
  Ray worker, it booted during the user's first seconds of work, starved by
  it (31 ms of CPU a second beside two busy workers); it is replaced by a
  stand-in that lives as long as the raylet (``_dashboardstub.py``).

``init`` with the last two, 7 runs each way (medians, ranges): 0.89 s
(0.75-1.02) instead of 1.51 s (1.29-2.31); the ports alone 1.11 s. With
a raylet socket retried soon as well (``_headservices.system_config``), 8
runs each way on a quieter machine: 0.81 s (0.76-0.89) instead of 1.19 s
(1.16-1.49). What moved: a first wave of 8 workers launched right after
``init`` takes a little longer (0.21-0.30 s instead of 0.18-0.20, 3 runs
each way: the agents still booting behind it), ``init`` and that wave
together 0.91-1.23 s instead of 1.36-1.67; a session ended at once after
its start ends a little later (0.14 s instead of 0.09: the agents may be
still starting), one ended after a few seconds as before.

The runtime env agent's port is chosen between Ray's worker ports (the
raylet's ``--max_worker_port``, 19999 by default) and the kernel's ephemeral
range (``ip_local_port_range``, from 32768 by default), where neither Ray
nor the kernel hands out ports by itself, and held until the head ends: a
socket of the session's process bound to it, on the address the agent
serves (the node's, Ray's choice), with ``SO_REUSEADDR``, never listening.
The agent (which binds with ``SO_REUSEADDR`` too) can bind and listen
there; a program that binds it without ``SO_REUSEADDR`` meanwhile is
refused (a port taken in between would end the agent and, with it, the
raylet: seen when forced). If that range is empty or full, the raylet
waits for the runtime env agent's file as Ray does, and that agent starts
at its usual priority.

The flags are Ray 2.60's raylet's (``pyproject.toml`` pins that version;
``tests/unit/test_rayletcommand.py`` holds the command's shape and
``tests/test_security.py`` a real head's): a raylet that did not know one
would not start.
"""

from __future__ import annotations

import contextlib
import os
import random
import shlex
import shutil
import socket
import sys
from collections.abc import Sequence

PRESTART_FLAG = "--num_prestart_python_workers="  # set to num_cpus by ray.init
UNUSED_AGENT_PORTS = ("--metrics-agent-port=", "--metrics_export_port=")  # a minimal agent's
LISTEN_PORT_FLAG = "--dashboard_agent_listen_port="  # a raylet flag ray.init does not pass
RUNTIME_ENV_PORT_FLAG = "--runtime_env_agent_port="  # the raylet's
AGENT_PORT_FLAG = "--runtime-env-agent-port="  # the same, in the agent's own command
DASHBOARD_AGENT_COMMAND = "--dashboard_agent_command="
RUNTIME_ENV_AGENT_COMMAND = "--runtime_env_agent_command="
AGENT_NICENESS = 19
_EPHEMERAL_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"
_DEFAULT_EPHEMERAL_LOW = 32768
_DEFAULT_MAX_WORKER_PORT = 19999
_CANDIDATES = 32


def minimal_raylet(command: Sequence[str], held: list[socket.socket]) -> list[str]:
    """The raylet's command: no prestarted worker; the agents' ports given; a dashboard stand-in.

    The socket holding the runtime env agent's port is added to ``held``:
    keep it open until the head ends.
    """
    address = _flag(command, "--node_ip_address=") or ""
    holder = reserve_port(address, _max_worker_port(command) + 1, _ephemeral_low())
    port = None
    if holder is not None:
        held.append(holder)
        port = holder.getsockname()[1]
    nice = shutil.which("nice")
    return [*(_changed(arg, port, nice) for arg in command), f"{LISTEN_PORT_FLAG}-1"]


def _changed(arg: str, runtime_env_port: int | None, nice: str | None) -> str:
    if arg.startswith(PRESTART_FLAG):
        return f"{PRESTART_FLAG}0"
    if arg.startswith(UNUSED_AGENT_PORTS) and arg.endswith("=0"):
        return f"{arg[:-1]}-1"
    if arg.startswith(DASHBOARD_AGENT_COMMAND):
        return _stand_in(arg)
    if runtime_env_port is not None and arg.startswith(RUNTIME_ENV_AGENT_COMMAND):
        return _behind(
            arg.replace(f"{AGENT_PORT_FLAG}0", f"{AGENT_PORT_FLAG}{runtime_env_port}"), nice
        )
    if runtime_env_port is not None and arg == f"{RUNTIME_ENV_PORT_FLAG}0":
        return f"{RUNTIME_ENV_PORT_FLAG}{runtime_env_port}"
    return arg


def _stand_in(agent_command_arg: str) -> str:
    """The dashboard agent's command replaced by ``_dashboardstub.py`` on the same interpreter."""
    flag, _, command = agent_command_arg.partition("=")
    python = shlex.split(command)[0] if command.strip() else sys.executable
    stub = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_dashboardstub.py")
    return f"{flag}={shlex.join([python, '-I', '-S', stub])}"


def _behind(agent_command_arg: str, nice: str | None) -> str:
    """``--<agent>_command=...`` run at the lowest priority (``nice`` execs the agent itself)."""
    if nice is None:
        return agent_command_arg
    flag, _, command = agent_command_arg.partition("=")
    return f"{flag}={nice} -n {AGENT_NICENESS} {command}"


def reserve_port(address: str, low: int, high: int) -> socket.socket | None:
    """A socket holding a port of ``address`` in ``[low, high)`` that was free, or None."""
    for port in random.sample(range(low, high), max(0, min(_CANDIDATES, high - low))):
        holder = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            holder.bind((address, port))
        except OSError:
            holder.close()
            continue
        return holder
    return None


def _flag(command: Sequence[str], flag: str) -> str | None:
    return next((arg.removeprefix(flag) for arg in command if arg.startswith(flag)), None)


def _max_worker_port(command: Sequence[str]) -> int:
    with contextlib.suppress(ValueError):
        return int(_flag(command, "--max_worker_port=") or 0) or _DEFAULT_MAX_WORKER_PORT
    return _DEFAULT_MAX_WORKER_PORT  # (0 or none: Ray's default range, or ports from the kernel's)


def _ephemeral_low() -> int:
    try:
        with open(_EPHEMERAL_RANGE) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return _DEFAULT_EPHEMERAL_LOW
