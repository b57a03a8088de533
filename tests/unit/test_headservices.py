"""``_headservices``: what of Ray's head an own head starts, without starting one.

The real heads are checked in test_security (the default) and test_boot
(``head_services="all"``); here, that the patch of Ray's private ``Node`` is
undone after the one ``ray.init`` call, and that a Ray whose private names
moved gets a full head rather than an error.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from ray._private import node, parameter, services, utils

from cmlray import _headservices
from cmlray._config import SessionConfig


def patched() -> tuple[object, ...]:
    return (
        node.Node.__init__,
        node.Node.start_api_server,
        utils.get_dashboard_dependency_error,
        services.start_ray_process,
        node.wait_for_persisted_port,
    )


def test_minimal_patches_rays_node_only_inside_the_block() -> None:
    before = patched()
    with _headservices.only("minimal"):
        assert node.Node.__init__ is not before[0]
        assert node.Node.start_api_server(object()) is None
        # the dashboard agent starts --minimal, without importing the dashboard's packages
        assert isinstance(utils.get_dashboard_dependency_error(), ImportError)
        assert services.start_ray_process is not before[3]
    assert patched() == before


def test_the_raylets_command_changes_and_other_processes_start_unchanged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[tuple[list[str], str]] = []
    monkeypatch.setattr(services, "start_ray_process", lambda c, t, *a, **k: started.append((c, t)))
    raylet = ["raylet", "--num_prestart_python_workers=8", "--maximum_startup_concurrency=8"]
    gcs = ["gcs_server", "--num_prestart_python_workers=8"]
    with _headservices.only("minimal") as held:
        services.start_ray_process(list(raylet), "raylet", fate_share=False)
        services.start_ray_process(list(gcs), "gcs_server")
    assert len(held) == 1  # the runtime env agent's port (tests/unit/test_rayletcommand.py)
    held[0].close()
    assert started[0][0][:3] == [
        "raylet", "--num_prestart_python_workers=0", "--maximum_startup_concurrency=8"
    ]  # fmt: skip
    assert started[1] == (gcs, "gcs_server")


def test_the_patch_is_undone_when_ray_init_raises() -> None:
    before = node.Node.__init__
    with pytest.raises(RuntimeError, match="no head"), _headservices.only("minimal"):
        raise RuntimeError("no head")
    assert node.Node.__init__ is before


def test_all_changes_nothing() -> None:
    before = patched()
    with _headservices.only("all"):
        assert patched() == before


def test_a_ray_whose_private_names_moved_gets_a_full_head(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class OtherParams:  # a future RayParams without the two switches
        pass

    monkeypatch.setattr(parameter, "RayParams", OtherParams)
    assert _headservices._node_class() is None
    before = node.Node.__init__
    with _headservices.only("minimal"):
        assert node.Node.__init__ is before


@pytest.mark.parametrize("value", ["none", "", None, ["minimal"], 1])
def test_check_names_the_argument(value: object) -> None:
    with pytest.raises(ValueError, match=r"head_services must be 'minimal' or 'all', got"):
        SessionConfig.build(head_services=value)


def test_the_gcs_port_file_is_polled_often_inside_the_block(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[dict[str, object]] = []
    real = node.wait_for_persisted_port

    def recorded(*args: object, **kwargs: object) -> object:
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(node, "wait_for_persisted_port", recorded)
    node_id = "ab" * 28
    (tmp_path / node.get_port_filename(node_id, "gcs_server_port")).write_text("6379")
    with _headservices.only("minimal") as held:
        port = node.wait_for_persisted_port(
            str(tmp_path), node_id, "gcs_server_port", timeout_ms=1000
        )
    for socket in held:
        socket.close()
    assert port == 6379  # Ray's own function read it
    assert calls == [{"timeout_ms": 1000, "poll_interval_ms": _headservices.PORT_POLL_MS}]
    assert node.wait_for_persisted_port is recorded  # as it was before the block
