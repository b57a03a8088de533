"""Which of Ray's head services an own head starts.

``ray.init(address="local")`` starts, beside the GCS and the raylet (with its
runtime-env and dashboard agents), three Python processes cmlray does not use:

- the autoscaler monitor (``monitor.py``): nothing to scale on one machine,
  and cmlray checks every request's feasibility itself;
- the log monitor (``log_monitor.py``): it forwards workers' logs to drivers,
  which cmlray turns off (``log_to_driver=False``) and streams itself;
- the API server (the dashboard head, even with ``include_dashboard=False``):
  Ray's state API (``ray list ...``, ``ray.util.state``) and job submission.

Measured on this 2-core machine (``benchmarks/launch.py``, and by hand: the
same ``ray.init`` with and without them): ``ray.init`` 1.67 s instead of
2.24 s, ``ray.shutdown`` 0.35 s instead of 1.36 s (it waits for those
processes), 8 head processes instead of 11, about 250 MiB less resident
memory. ``head_services="all"`` starts them as ``ray.init`` does.

Nor does a minimal head record Ray's task events (every task's states,
reported to the GCS each second by every Ray process, for the state API and
the dashboard; ``system_config``): ``ray.shutdown`` waited for their last
report, 0.35-0.40 s instead of 0.10-0.16 s (``cmlray.shutdown``, 5 sessions
each way). And the raylet's dashboard agent starts ``--minimal``, as it does
where Ray is installed without its dashboard's packages: to choose,
``ray.init`` imports those packages in the session's process (``aiohttp``
and more: 0.145 s of ``cmlray.init`` here, cProfile, where the import fails
at the first missing one; all of them where they are installed), for an API
server the session does not start.

The raylet of a minimal head prestarts no Python worker instead of one per
CPU, and waits for none of its agents' ports (``_rayletcommand.py``).

``ray.init`` learns the port its GCS bound from a file the GCS writes once it
serves, polled every 100 ms (``wait_for_persisted_port``): the GCS here is up
in a fraction of that, and the rest of the tick was lost in every start.
Within ``only`` the file is polled every ``PORT_POLL_MS`` instead.

Ray's public ``ray.init`` has no switch for these, so this reaches into
``ray._private`` (``node.Node``, ``utils``, ``services``) for the duration
of one ``ray.init`` call; if a future Ray moves those names, the head simply
starts in full.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

from cmlray._rayletcommand import minimal_raylet

CONNECT_RETRY_MS = 20  # Ray's: 1,000
CONNECT_BUDGET_MS = 10_000  # Ray's: 10 attempts a second apart
PORT_POLL_MS = 5  # Ray's: 100


@contextlib.contextmanager
def only(head_services: str) -> Iterator[list[socket.socket]]:
    """Within this block, a head Ray starts has only the services asked for.

    Yields the sockets that hold ports free for the head's agents until they
    bind them (``_rayletcommand.py``): close them once the head has ended.
    """
    held: list[socket.socket] = []
    node_class = _node_class() if head_services == "minimal" else None
    if node_class is None:
        yield held
        return
    from ray._private import ray_constants, services, utils

    original_init, original_start = node_class.__init__, services.start_ray_process

    def init(self: Any, ray_params: Any, *args: Any, **kwargs: Any) -> None:
        ray_params.no_monitor = True
        ray_params.include_log_monitor = False
        original_init(self, ray_params, *args, **kwargs)

    def no_api_server(self: Any, **kwargs: Any) -> None:
        return None

    def left_out() -> ImportError:
        return ImportError("the dashboard's packages are not imported: head_services='minimal'")

    def start_process(command: list[str], process_type: str, *args: Any, **kwargs: Any) -> Any:
        if process_type == ray_constants.PROCESS_TYPE_RAYLET:
            command = minimal_raylet(command, held)
        return original_start(command, process_type, *args, **kwargs)

    with swapped(
        (node_class, "__init__", init),
        (node_class, "start_api_server", no_api_server),
        (utils, "get_dashboard_dependency_error", left_out),
        (services, "start_ray_process", start_process),
        *_quick_port_wait(),
    ):
        yield held


def _quick_port_wait() -> list[tuple[Any, str, Any]]:
    """The swap that makes ``ray.init`` poll for its GCS's port every ``PORT_POLL_MS``."""
    from ray._private import node

    original = getattr(node, "wait_for_persisted_port", None)
    if original is None:  # a Ray that finds its GCS's port some other way
        return []

    def wait_for_persisted_port(*args: Any, **kwargs: Any) -> Any:
        return original(*args, **{**kwargs, "poll_interval_ms": PORT_POLL_MS})

    return [(node, "wait_for_persisted_port", wait_for_persisted_port)]


@contextlib.contextmanager
def swapped(*replacements: tuple[Any, str, Any]) -> Iterator[None]:
    """Each ``(owner, name, value)`` set for the block; the originals back after it, always.

    How cmlray changes Ray's private names for one ``ray.init`` call (here and
    in ``_rayletwait.py``).
    """
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in replacements]
    for owner, name, value in replacements:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for owner, name, value in originals:
            setattr(owner, name, value)


def system_config(head_services: str) -> dict[str, Any]:
    """Ray's settings for an own minimal head: no task events; a socket not there yet retried soon.

    A client of a raylet's socket (the raylet's own object manager to its
    object store, a worker to its raylet) that finds it not ready sleeps
    ``raylet_client_connect_timeout_milliseconds`` (a whole second) before
    it tries again: in 2 of 14 starts here the raylet's object manager lost
    that race with its store's thread and ``init`` took a second longer.
    Tried every 20 ms instead, as often as keeps Ray's 10 s in all:
    ``init`` 0.72-0.78 s in 16 starts, none slower (``_rayletcommand.py``
    has the rest of the start's measurements).

    Ray refuses a setting it does not know (its head would not start): the
    keys are Ray 2.60's, the version ``pyproject.toml`` pins.
    """
    if head_services != "minimal":
        return {}
    return {
        "task_events_report_interval_ms": 0,
        "raylet_client_connect_timeout_milliseconds": CONNECT_RETRY_MS,
        "raylet_client_num_connect_attempts": CONNECT_BUDGET_MS // CONNECT_RETRY_MS,
    }


def _node_class() -> Any:
    """Ray's private ``Node`` class, if it still has what ``only`` changes."""
    try:
        from ray._private import services, utils
        from ray._private.node import Node
        from ray._private.parameter import RayParams
    except ImportError:
        return None
    params = RayParams()
    if not all(hasattr(params, name) for name in ("no_monitor", "include_log_monitor")):
        return None
    needed = (
        hasattr(Node, "start_api_server")
        and hasattr(utils, "get_dashboard_dependency_error")
        and hasattr(services, "start_ray_process")
    )
    return Node if needed else None
