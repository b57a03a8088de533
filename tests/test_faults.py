"""Faults and limits: enforced memory, run time limits, a dead node agent, a soak."""

from __future__ import annotations

import os
import resource
import signal

import psutil
import pytest

import cmlray
from cmlray import _lifecycle
from tests.support.deadagent import kill_its_agent
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


def _agent_pid(worker_id: str) -> int:
    """The pid of the node agent running a worker: with an own head, a process of the session."""
    agent = _lifecycle.require().agents._of_worker[worker_id]
    assert agent.process is not None and agent.handle is None  # no Ray actor
    assert psutil.Process(agent.process.pid).ppid() == os.getpid()
    return agent.process.pid


@pytest.mark.parametrize(
    "signum", [pytest.param(s, id=s.name) for s in (signal.SIGTERM, signal.SIGKILL)]
)
def test_a_dead_agent_fails_its_workers_ends_their_programs_and_is_replaced(
    signum: signal.Signals,
) -> None:
    reason = kill_its_agent(lambda worker_id: os.kill(_agent_pid(worker_id), signum))
    assert reason == f"its node's agent died ({signum.name})", reason


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
    agents = [c for c in marked_commands() if "NodeAgent" in c or "cmlray._homeagent" in c]
    assert len(agents) == 1, agents  # the session's own (the two killed above are gone)
