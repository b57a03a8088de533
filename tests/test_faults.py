"""Faults and limits: enforced memory, run time limits, a dead node agent, a soak."""

from __future__ import annotations

import os
import resource
import signal

import psutil
import pytest

import cmlray
from cmlray import _lifecycle
from tests.support.processes import marked_commands

pytestmark = pytest.mark.usefixtures("session")

HOG = "x = bytearray({size}); x[::4096] = b'1' * len(x[::4096]); print('allocated', flush=True)\nimport time; time.sleep(60)"


def test_worker_over_its_memory_is_stopped_and_says_why() -> None:
    code = HOG.format(size=400 << 20)  # 400 MiB resident, against a request of 0.25 GiB
    (worker,) = cmlray.launch_workers(1, cpu=0.25, memory=0.25, code=code)
    (failure,) = cmlray.await_workers(worker, timeout_seconds=120)["failures"]
    assert failure["status"] == "failed"
    assert failure["reason"].startswith("exceeded memory: used ")
    assert failure["reason"].endswith(" GiB of 0.25 GiB")
    used = float(failure["reason"].split()[3])
    assert used > 0.25


def test_worker_within_its_memory_is_left_alone() -> None:
    code = HOG.format(size=50 << 20).replace("time.sleep(60)", "time.sleep(1)")
    (worker,) = cmlray.launch_workers(1, cpu=0.25, memory=0.5, code=code)
    (done,) = cmlray.await_workers(worker, timeout_seconds=120)["workers"]
    assert done["status"] == "succeeded"


def test_run_time_limit_gives_timedout() -> None:
    workers = cmlray.launch_workers(1, cpu=0.25, memory=0.25, code="!sleep 60", timeout_s=1)
    (failure,) = cmlray.await_workers(workers, timeout_seconds=120)["failures"]
    assert failure["status"] == "timedout"
    assert failure["reason"] == "timed out after 1 s"
    assert failure["exit_code"] == -15


def _agent_of(worker_id: str) -> tuple[object, int]:
    """The node agent running a worker: its Ray handle and its process's pid."""
    import ray

    session = _lifecycle.require()
    handle = session.agents._of_worker[worker_id].handle
    return handle, int(ray.get(handle.ready.remote(), timeout=60)["pid"])


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("ray.kill", "its node's agent was killed"),
        ("SIGKILL", "its node's agent died"),
    ],
)
def test_a_dead_agent_fails_its_workers_ends_their_programs_and_is_replaced(
    how: str, reason: str
) -> None:
    import ray

    (worker,) = cmlray.launch_workers(1, cpu=0.25, memory=0.25, code="!echo up; sleep 300")
    registry = _lifecycle.require().registry
    record = registry.get(worker["id"])
    assert registry.wait_for(lambda: "up" in record.tail, 60)
    program = psutil.Process(record.pid)
    handle, pid = _agent_of(worker["id"])
    if how == "ray.kill":
        ray.kill(handle, no_restart=True)
    else:
        os.kill(pid, signal.SIGKILL)
    (failure,) = cmlray.await_workers(worker, timeout_seconds=60)["failures"]
    assert failure["status"] == "failed"
    assert failure["reason"].startswith(reason), failure["reason"]
    program.wait(timeout=30)  # raises TimeoutExpired if the guard did not end it
    # The next worker on that node gets a new agent.
    (after,) = cmlray.launch_workers(1, cpu=0.25, memory=0.25, code="print('after')")
    (done,) = cmlray.await_workers(after, timeout_seconds=120)["workers"]
    assert done["tail"] == ["after"] and done["node_id"] == record.node_id


def _open_fds() -> int:
    return len(os.listdir(f"/proc/{os.getpid()}/fd"))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_soak_300_short_workers_in_waves() -> None:
    """300 workers in waves of 10: memory and fds stay bounded, every worker ends."""
    wave = lambda: cmlray.launch_workers(10, cpu=0.25, memory=0.1, code="print('hi')")  # noqa: E731
    cmlray.await_workers(wave(), timeout_seconds=120)  # warm up before the baseline
    fds_before, rss_before = _open_fds(), psutil.Process().memory_info().rss
    finished = []
    for _ in range(29):
        result = cmlray.await_workers(wave(), timeout_seconds=120)
        assert not result["failures"], result["failures"][:1]
        finished += result["workers"]
    growth_fds = _open_fds() - fds_before
    growth_mib = (psutil.Process().memory_info().rss - rss_before) / 2**20
    print(
        f"soak: fds {growth_fds:+d}, rss {growth_mib:+.1f} MiB, peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
    )
    assert len(finished) == 290 and all(w["status"] == "succeeded" for w in finished)
    assert growth_fds <= 20, growth_fds  # no fd per worker kept
    assert growth_mib < 150, growth_mib  # bounded: not growing with every worker's stream
    # Warm: every worker ran under the one agent, no Ray process per worker.
    agents = [c for c in marked_commands() if "NodeAgent" in c]
    assert len(agents) <= 3, agents  # the session's own, and the two killed above at most
