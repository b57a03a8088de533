"""Attach mode: a session on a Ray cluster started elsewhere.

The test starts a head with ``ray start --head`` (its own temp dir and port,
token auth on). A session that attaches runs workers; when
its process is SIGKILLed, its workers and everything they started end, while
the cluster keeps running with no cmlray actor left. Another session on the
same cluster can neither list nor stop the first one's workers.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import ray

import cmlray
from cmlray import _procfs
from tests.support.lifetime import GONE_WITHIN_S, Driver
from tests.support.processes import marked_processes, wait_no_marked_processes

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leaks")]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _head_processes(temp: Path) -> list[psutil.Process]:
    """The external head's processes: a file open in its temp dir, or it in their command."""
    pids = set(_procfs.holders_of(str(temp)))
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if str(temp) in " ".join(proc.cmdline()) and proc.status() != psutil.STATUS_ZOMBIE:
                pids.add(proc.pid)
    found = []
    for pid in pids:
        try:
            found.append(psutil.Process(pid))
        except psutil.Error:
            continue
    return found


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[str, Path]]:
    """An external Ray head; yields its address and temp dir. Killed by pid after.

    Its temp dir is short, never pytest's (under pytest-xdist that is
    ``.../popen-gw0/...``): Ray's socket paths in it must fit AF_UNIX's 107 bytes.
    """
    temp = Path(tempfile.mkdtemp(prefix="cmlray-head-"))
    try:
        yield from _external_head(temp)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _external_head(temp: Path) -> Iterator[tuple[str, Path]]:
    token = temp / "token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    port = _free_port()
    ray_cli = str(Path(sys.executable).parent / "ray")
    started = subprocess.run(
        [ray_cli, "start", "--head", f"--port={port}",
         f"--temp-dir={temp / 'ray'}", "--include-dashboard=false", "--num-cpus=2",
         "--disable-usage-stats"],
        env=dict(os.environ, **auth), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if started.returncode != 0:
        _stop_head(temp / "ray")
        raise RuntimeError(f"ray start --head failed:\n{started.stderr[-3000:]}")
    saved = {key: os.environ.get(key) for key in auth}
    os.environ.update(auth)
    try:
        yield f"127.0.0.1:{port}", temp / "ray"
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _stop_head(temp / "ray")


def _stop_head(temp: Path) -> None:
    """End the external head by pid (never `ray stop`: it would end every Ray here).

    SIGTERM, then SIGKILL for what is left, looking again until nothing of the
    head is left: a process of Ray's may open its first file there late.
    """
    for proc in _head_processes(temp):
        with contextlib.suppress(psutil.Error):  # it may end between listing and signalling
            proc.terminate()
    psutil.wait_procs(_head_processes(temp), timeout=GONE_WITHIN_S)
    deadline = time.monotonic() + GONE_WITHIN_S
    while (left := _head_processes(temp)) and time.monotonic() < deadline:
        for proc in left:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(left, timeout=1)


def _cmdline(proc: psutil.Process) -> str:
    """Its command line; "" for one that ended (a zombie) meanwhile."""
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def _names(procs: list[psutil.Process]) -> set[str]:
    names = set()
    for proc in procs:
        try:
            names.add(proc.name())
        except psutil.Error:
            continue
    return names


def test_killed_attached_session_ends_only_its_workers(cluster: tuple[str, Path]) -> None:
    address, temp = cluster
    driver = Driver("wait", address)
    try:
        commands = driver.wait_for_trees()
        assert sum(c.startswith("sleep 30") for c in commands) == 8, commands
        assert not any("raylet" in c for c in commands)  # attached: no head of its own
        assert driver.info["temp_dir"] is None

        cmlray.init(address=address)  # a second session on the same cluster
        try:
            assert cmlray.list_workers() == []
            results = cmlray.stop_workers(*driver.info["ids"])
            assert [r.status_code for r in results] == [404, 404]
        finally:
            cmlray.shutdown()
        assert sum(c.startswith("sleep 30") for c in driver.commands()) == 8

        os.kill(driver.proc.pid, signal.SIGKILL)
        driver.finish()
        left = wait_no_marked_processes(GONE_WITHIN_S, driver.mark)
        assert not left, "left behind:\n" + "\n".join(left)
    finally:
        for proc in marked_processes(driver.mark):
            proc.kill()
    assert {"gcs_server", "raylet"} <= _names(_head_processes(temp)), (
        "the cluster must keep running"
    )
    assert not any("NodeAgent" in _cmdline(p) for p in _head_processes(temp))


def test_attached_session_runs_workers_on_the_cluster(cluster: tuple[str, Path]) -> None:
    address, temp = cluster
    cmlray.init(address=address)
    try:
        workers = cmlray.launch_workers(2, cpu=0.5, memory=0.1, code="!echo $CML_MASTER_IP")
        done = cmlray.await_workers(workers)["workers"]
        node_ips = {node["NodeManagerAddress"] for node in ray.nodes()}
        # Attached: the master IP is the session's node address as the cluster knows it.
        assert len(done) == 2 and all(w["ip_address"] in node_ips for w in done)
        assert [w["tail"] for w in done] == [[done[0]["ip_address"]]] * 2
    finally:
        cmlray.shutdown()
    assert {"gcs_server", "raylet"} <= _names(_head_processes(temp))


def test_a_project_over_rays_upload_limit_fails_at_init_saying_how_to_trim_it(
    cluster: tuple[str, Path], tmp_path: Path
) -> None:
    """Ray's limit lowered to 2 MiB (its own variable) so a 3 MiB project is over it."""
    address, _ = cluster
    (tmp_path / "data.bin").write_bytes(os.urandom(3 << 20))
    (tmp_path / ".venv").mkdir()  # left behind by default: not counted
    (tmp_path / ".venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    code = (
        "import cmlray\n"
        "try:\n"
        f"    cmlray.init(address={address!r})\n"
        "except cmlray.SessionError as exc:\n"
        "    print('REFUSED', exc)\n"
        f"cmlray.init(address={address!r}, project_excludes=['data.bin'])\n"
        "print('TRIMMED', cmlray.await_workers(cmlray.launch_workers(1, cpu=0.5, memory=0.1,"
        " code='import os; print(sorted(os.listdir()))'))['workers'][0]['tail'])\n"
        "cmlray.shutdown()\n"
    )
    env = dict(os.environ, RAY_max_grpc_message_size=str(2 << 20))
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    refused = next(line for line in done.stdout.splitlines() if line.startswith("REFUSED"))
    assert f"the project dir {tmp_path} is too large to ship" in refused
    assert "project_excludes" in refused and "ship_project=False" in refused
    assert "TRIMMED ['[]']" in done.stdout  # neither the data nor the virtualenv went
