"""``_rayletwait``: the patch of Ray's ``get_node``, without starting a head.

The real heads (every session the suite starts) go through it; against one,
``tests/test_rayletwait.py`` checks what the wait answers.
"""

from __future__ import annotations

import pytest
from ray._private import services, state

from cmlray import _rayletwait


def test_polled_patches_get_node_only_inside_the_block() -> None:
    before = services.get_node
    with _rayletwait.polled():
        assert services.get_node is not before
    assert services.get_node is before


def test_the_patch_is_undone_when_ray_init_raises() -> None:
    before = services.get_node
    with pytest.raises(RuntimeError, match="no head"), _rayletwait.polled():
        raise RuntimeError("no head")
    assert services.get_node is before


def test_a_ray_whose_private_names_moved_waits_as_ray_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(state.GlobalState, "node_table")
    assert _rayletwait._services() is None
    before = services.get_node
    with _rayletwait.polled():
        assert services.get_node is before


def test_only_the_node_alive_counts() -> None:
    table = [
        {"NodeID": "aa", "Alive": False},  # a node of that id that died
        {"NodeID": "bb", "Alive": True},
    ]
    assert not _rayletwait._alive(table, "aa")
    assert _rayletwait._alive(table, "bb")
    assert not _rayletwait._alive(table, "cc")
    assert not _rayletwait._alive([], "bb")
