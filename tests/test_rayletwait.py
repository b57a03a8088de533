"""``_rayletwait`` against a running head: what the polled wait answers.

The session's own head started through it (``_head.start_own_head``); here,
its ``get_node`` finds that head's node, and for a node that never registers
it gives up after ``POLL_LIMIT_S`` and leaves the answer to Ray's own.
"""

from __future__ import annotations

from typing import Any

import pytest
import ray
from ray._private import services

from cmlray import _rayletwait


def test_the_heads_node_is_found(session: str) -> None:
    context = ray.get_runtime_context()
    assert _rayletwait.wait_registered(context.gcs_address, context.get_node_id())
    with _rayletwait.polled():
        info = services.get_node(context.gcs_address, context.get_node_id())
    assert info["node_id"] == context.get_node_id()


def test_a_node_that_never_registers_is_left_to_rays_own_wait(
    session: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[tuple[str, str]] = []

    def rays_own(gcs_address: str, node_id: str) -> Any:
        asked.append((gcs_address, node_id))
        return {"node_id": node_id}

    monkeypatch.setattr(services, "get_node", rays_own)
    monkeypatch.setattr(_rayletwait, "POLL_LIMIT_S", 0.05)
    gcs_address, missing = ray.get_runtime_context().gcs_address, "ab" * 28
    assert not _rayletwait.wait_registered(gcs_address, missing)
    with _rayletwait.polled():
        assert services.get_node(gcs_address, missing) == {"node_id": missing}
    assert asked == [(gcs_address, missing)]
