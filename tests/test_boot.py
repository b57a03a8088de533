"""``cmlray.init(block=False)``: the head boots in the background.

The first call that needs the session waits for it; a start that fails
raises there, and leaves no session behind.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import psutil
import pytest

import cmlray
from cmlray import _head, _lifecycle
from cmlray._boot import Boot
from tests.support.console import Captured
from tests.support.heads import HEAD_EXTRAS, head_commands

pytestmark = pytest.mark.usefixtures("no_leaks")
DASHBOARD_PORT = 8265


def test_first_call_waits_for_a_background_start(captured: Captured) -> None:
    assert cmlray.init(num_cpus=2, block=False, console=captured.console) is None
    try:
        with pytest.raises(cmlray.SessionError, match="already running"):
            cmlray.init(num_cpus=2)  # one session, booting or not
        done = cmlray.await_workers(
            cmlray.launch_workers(2, cpu=0.5, memory=0.1, code="print('after boot')")
        )
        assert [w["tail"] for w in done["workers"]] == [["after boot"]] * 2
        # The head must outlive the thread that booted it (Ray's PDEATHSIG is per thread).
        again = cmlray.await_workers(cmlray.launch_workers(1, cpu=0.5, memory=0.1, code="pass"))
        assert len(again["workers"]) == 1, again["failures"]
    finally:
        cmlray.shutdown()
    assert _lifecycle.current(create=False) is None


def test_shutdown_while_booting_ends_the_session() -> None:
    cmlray.init(num_cpus=1, block=False)
    cmlray.shutdown()  # waits for the boot, then ends it
    assert _lifecycle.current(create=False) is None


def test_head_services_all_starts_rays_own_as_ray_init_does() -> None:
    """Monitor, log monitor and API server, the latter with no frontend and no dashboard port.

    Its gRPC port is Ray's own and listens on all interfaces (Ray 2.60 cannot
    bind it to loopback): token authentication guards it.
    """
    cmlray.init(num_cpus=1, head_services="all")
    try:
        temp_dir = _lifecycle.require().head.temp_dir
        assert temp_dir is not None
        ours = head_commands(temp_dir)
        for extra in HEAD_EXTRAS:
            assert [c for _, c in ours if extra in c], f"no {extra} among {ours}"
        for proc, cmdline in ours:
            if "dashboard/dashboard.py" in cmdline:
                assert "--disable-frontend" in cmdline
                listening = proc.net_connections(kind="inet")
                ports = {c.laddr.port for c in listening if c.status == psutil.CONN_LISTEN}
                assert DASHBOARD_PORT not in ports
    finally:
        cmlray.shutdown()


def test_a_failed_background_start_raises_at_the_first_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A real Ray start that fails takes minutes of retries; the failure is injected.
    def refuse(*_args: object) -> None:
        raise cmlray.SessionError("starting a Ray head failed: no room")

    monkeypatch.setattr(_head, "connect", refuse)
    cmlray.init(block=False)
    with pytest.raises(cmlray.SessionError, match="no room"):
        cmlray.list_workers()
    assert _lifecycle.current(create=False) is None  # gone: a new init may follow


def test_a_failed_head_start_leaves_no_temp_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import ray

    made: list[str] = []
    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp(*args: Any, **kwargs: Any) -> str:
        path = real_mkdtemp(*args, **{**kwargs, "dir": str(tmp_path)})
        made.append(path)
        return path

    def refused(**kwargs: Any) -> None:
        assert os.path.exists(kwargs["_temp_dir"])  # the token is written before Ray starts
        raise RuntimeError("no room")

    monkeypatch.setattr(_head.tempfile, "mkdtemp", mkdtemp)
    monkeypatch.setattr(ray, "init", refused)
    auth_before = os.environ.get("RAY_AUTH_MODE")
    with pytest.raises(cmlray.SessionError, match=r"starting a Ray head failed.*no room"):
        _head.start_own_head(num_cpus=1, num_gpus=None, resources=None)
    assert len(made) == 1 and not os.path.exists(made[0])
    assert os.environ.get("RAY_AUTH_MODE") == auth_before  # as it was


def test_boot_hands_its_result_or_error_to_the_caller_and_waits_for_release() -> None:
    def fail(_boot: Boot[int]) -> int:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        Boot(fail, "/").result()
    booted = Boot(lambda _boot: 42, "/")
    assert booted.result() == 42
    (thread,) = [t for t in threading.enumerate() if t.name == "cmlray-boot"]
    assert thread.is_alive()  # kept until the session ends (it owns the head)
    booted.release()
    thread.join(timeout=10)
    assert not thread.is_alive()
