"""An own head's start without Ray's idle second waiting for its raylet.

``ray.init`` starting a head (``ray._private.node.Node``) starts the GCS and
the raylet, sleeps 0.1 s, then asks the GCS for the raylet's node
(``ray._private.services.get_node``). That call is Ray's C++
``GlobalStateAccessor::GetNode``: when the raylet has not registered yet it
sleeps a whole second before it asks again. Here the raylet registers about
0.5 s after it starts (2 cores), so every own head waited about half a second
for nothing. Measured on this machine (a session started, one worker run,
alternating): ``cmlray.init()`` 1.89 and 1.95 s with Ray's wait, 1.36 and
1.41 s with this one (it polled 79 and 86 times).

Within ``polled()``, ``get_node`` first asks the GCS for its node table every
``POLL_S`` until the node is there (for at most ``POLL_LIMIT_S``), then calls
Ray's own, which then answers at once. Like ``_headservices.py``, this
reaches into Ray's private names for the duration of one ``ray.init`` call;
if they have moved, the head starts as Ray starts it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from cmlray import _headservices

POLL_S = 0.01  # one GetAllNodeInfo call, about 0.5 ms
POLL_LIMIT_S = 10.0  # then Ray's own wait (up to its raylet_start_wait_time_s) decides


@contextlib.contextmanager
def polled() -> Iterator[None]:
    """Within this block, a head Ray starts is ready as soon as its raylet has registered."""
    services = _services()
    if services is None:
        yield
        return
    original = services.get_node

    def get_node(gcs_address: str, node_id: str) -> Any:
        wait_registered(gcs_address, node_id)
        return original(gcs_address, node_id)

    with _headservices.swapped((services, "get_node", get_node)):
        yield


def wait_registered(gcs_address: str, node_id: str) -> bool:
    """Wait until the GCS at ``gcs_address`` lists ``node_id`` alive; whether it did.

    False after ``POLL_LIMIT_S``, or at once when the GCS cannot be asked
    (Ray's own ``get_node`` then waits and reports as it always has).
    """
    from ray._private import services, state

    global_state = state.GlobalState()
    deadline = time.monotonic() + POLL_LIMIT_S
    try:
        global_state._initialize_global_state(services._get_gcs_client_options(gcs_address))
        while not _alive(global_state.node_table(), node_id):
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_S)
        return True
    except Exception:  # (a Ray whose private API moved, a GCS that does not answer)
        return False
    finally:
        global_state.disconnect()


def _alive(node_table: list[dict[str, Any]], node_id: str) -> bool:
    return any(row.get("NodeID") == node_id and row.get("Alive") for row in node_table)


def _services() -> Any:
    """Ray's private ``services`` module, if it still has what ``polled`` needs."""
    try:
        from ray._private import services, state
    except ImportError:
        return None
    needed = (
        hasattr(services, "get_node")
        and hasattr(services, "_get_gcs_client_options")
        and hasattr(state.GlobalState, "node_table")
    )
    return services if needed else None
