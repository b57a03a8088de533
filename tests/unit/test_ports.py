"""CDSW_APP_PORT claims: one port per worker on a node, and none left behind.

A claim whose claimant is gone (a node's agent and guard killed together, as a
loaded machine's reaper may do) used to stay in the claims directory for good;
now it is taken over when its port comes up again, swept when a node agent
starts, and by an own head's reaper. A lease touches only its own port's
file, never the whole directory: a node running a thousand workers claims
each port in constant time. Plain processes and files only, in a private
``TMPDIR`` so that other runs' claims are never touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cmlray import _ports, _standalone


@pytest.fixture
def claims(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private claims directory (through TMPDIR, as every cmlray process reads it)."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)  # gettempdir() caches its first answer
    yield Path(_ports.claims_dir())


def _dead_pid() -> int:
    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


def _claim(claims: Path, port: int, text: str) -> Path:
    path = claims / str(port)
    path.write_text(text)
    return path


def test_a_lease_claims_with_its_pid_and_release_removes_it(claims: Path) -> None:
    lease = _ports.lease()
    path = Path(lease.claim_path)
    assert path.parent == claims and path.name == str(lease.port)
    assert path.read_text() == str(os.getpid())
    lease.release()
    assert not path.exists()
    lease.release()  # twice is harmless


def test_sweep_removes_only_claims_whose_claimant_is_gone(claims: Path) -> None:
    stale = _claim(claims, 40001, str(_dead_pid()))
    live = _claim(claims, 40002, str(os.getpid()))
    being_written = _claim(claims, 40003, "")
    assert _ports.sweep() == [40001]
    assert not stale.exists() and live.exists() and being_written.exists()
    assert (claims / ".lock").exists()  # the lock file is no claim: never swept


def test_a_stale_claim_is_taken_over_and_a_lease_touches_only_its_port(
    claims: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = _claim(claims, 40011, str(_dead_pid()))
    other_stale = _claim(claims, 40012, str(_dead_pid()))
    live = _claim(claims, 40013, str(os.getpid() + 0))
    offered = iter([40013, 40011])  # the port of a live claim first, then the stale one
    monkeypatch.setattr(_ports, "_free_port", lambda: next(offered))
    lease = _ports.lease()
    assert lease.port == 40011 and stale.read_text() == str(os.getpid())
    assert other_stale.exists() and live.exists()  # not looked at
    lease.release()


def test_concurrent_leases_get_distinct_ports(claims: Path) -> None:
    leases: list[_ports.PortLease] = []
    lock = threading.Lock()

    def take() -> None:
        for _ in range(10):
            lease = _ports.lease()
            with lock:
                leases.append(lease)

    threads = [threading.Thread(target=take) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({lease.port for lease in leases}) == 40
    for lease in leases:
        lease.release()
    assert [name for name in os.listdir(claims) if name.isdigit()] == []


def test_the_reaper_sweeps_stale_claims_when_its_session_ends(claims: Path, tmp_path: Path) -> None:
    stale = _claim(claims, 40021, str(_dead_pid()))
    live = _claim(claims, 40022, str(os.getpid()))
    head_temp = tmp_path / "head"
    head_temp.mkdir()
    plan = json.dumps({"pids": [], "temp_dir": str(head_temp)})
    done = subprocess.run(
        _standalone.command("cmlray._reaper"),
        input=plan.encode() + b"\n",  # stdin closes after it: the session has ended
        env={**os.environ, "TMPDIR": str(tmp_path)},
        timeout=60,
        check=True,
    )
    assert done.returncode == 0
    assert not head_temp.exists()
    assert not stale.exists() and live.exists()
