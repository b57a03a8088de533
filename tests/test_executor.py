"""cmlray.Executor: concurrent.futures' contract on real workers and a real queue."""

from __future__ import annotations

import concurrent.futures as cf
import functools
import os
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest

import cmlray
from tests.support.notebook import BIG, uses_big

pytestmark = pytest.mark.usefixtures("session")
# The workers' working dir is the session's project dir, where this package is not
# importable: this module's functions and classes travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class RefusedError(Exception):
    pass


def refuse(x: int) -> int:
    if x == 3:
        raise RefusedError(f"no {x}")
    return x


def wait_for(gate: Path, x: int) -> int:
    """A call that runs until ``gate`` exists (the test opens it when it has looked)."""
    while not gate.exists():
        time.sleep(0.02)
    return x


def test_submit_map_as_completed_and_an_exception_with_its_traceback() -> None:
    with cmlray.Executor(max_workers=2, cpu=0.5, memory=0.2) as pool:
        assert pool.submit(pow, 2, 10).result(timeout=120) == 1024
        assert list(pool.map(lambda a, b: a * b, range(50), range(50))) == [
            i * i for i in range(50)
        ]
        assert list(pool.map(str, range(40), chunksize=7)) == [str(i) for i in range(40)]
        submitted = {pool.submit(refuse, i): i for i in range(6)}
        done = {submitted[f]: f for f in cf.as_completed(submitted, timeout=120)}
        assert sorted(done) == list(range(6))
        failed = done[3].exception()
        assert isinstance(failed, RefusedError) and str(failed) == "no 3"
        assert any("in refuse" in note for note in failed.__notes__)  # the worker's traceback
        assert [done[i].result() for i in (0, 1, 2, 4, 5)] == [0, 1, 2, 4, 5]
        workers = [w for w in cmlray.list_workers() if w["name"].startswith("executor-")]
        assert len(workers) == 2 and {w["cpu"] for w in workers} == {0.5}
        queue = pool._queue
        assert queue is not None and queue.name in hosted_queues()
    assert all(w["status"] == "succeeded" for w in cmlray.list_workers() if w["id"] in
               {w["id"] for w in workers})  # fmt: skip
    assert queue.name not in hosted_queues()  # its calls all in: the queue and its results let go


def test_a_big_function_travels_to_the_workers_once() -> None:
    """Its calls carry a key; each worker fetches the function once (``_shipfn.py``)."""
    expected = [BIG[i] + i for i in range(40)]
    with cmlray.Executor(max_workers=2, cpu=0.5, memory=0.3, name="shipped") as pool:
        assert list(pool.map(uses_big, range(40))) == expected
        assert list(pool.map(uses_big, range(40), chunksize=6)) == expected
        assert pool.submit(uses_big, 5).result(timeout=120) == expected[5]
        assert pool.submit(lambda: 7).result(timeout=120) == 7  # small: with its call
        queue = pool._queue
        assert len(queue._call("attachment", "fn-1")) > len(BIG)  # attached once, for all
        with pytest.raises(cmlray.QueueError, match="nothing attached"):
            queue._call("attachment", "fn-2")


def hosted_queues() -> set[str]:
    """The queues the agent of the session's node hosts now."""
    from cmlray import _homecalls, _lifecycle

    queues = _lifecycle.require().queues
    return set(_homecalls.result(queues._agent_call("queue_servers"))) & set(queues._results)


def test_cancel_withdraws_calls_no_worker_holds_and_map_times_out(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    wait_for_gate = functools.partial(wait_for, gate)

    pool = cmlray.Executor(max_workers=1, cpu=0.5, memory=0.2, name="gated")
    try:
        first = pool.submit(wait_for_gate, 1)
        while not any(w["status"] == "running" for w in cmlray.list_workers()
                      if w["name"] == "gated-1"):  # fmt: skip
            time.sleep(0.05)
        while pool._queue.stats()["leased"] == 0:  # the worker holds the first call
            time.sleep(0.02)
        later = [pool.submit(wait_for_gate, i) for i in range(2, 6)]
        assert later[-1].cancel() and later[-1].cancelled()
        assert not first.cancel() and first.running()
        assert not first.cancel() and first.running()  # again (as map's cleanup may): no error
        with pytest.raises(TimeoutError):
            list(pool.map(wait_for_gate, [7], timeout=0.5))
        gate.touch()
        assert first.result(timeout=120) == 1
        assert [f.result(timeout=120) for f in later[:-1]] == [2, 3, 4]
        with pytest.raises(cf.CancelledError):
            later[-1].result()
    finally:
        gate.touch()
        pool.shutdown()


def test_shutdown_with_and_without_cancel_futures(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    wait_for_gate = functools.partial(wait_for, gate)

    pool = cmlray.Executor(max_workers=1, cpu=0.5, memory=0.2, name="drop")
    held = pool.submit(wait_for_gate, 0)
    while pool._queue.stats()["leased"] == 0:
        time.sleep(0.02)
    queued = [pool.submit(wait_for_gate, i) for i in range(1, 4)]
    pool.shutdown(wait=False, cancel_futures=True)  # returns at once
    assert all(f.cancelled() for f in queued) and not held.done()
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(wait_for_gate, 9)
    gate.touch()
    assert held.result(timeout=120) == 0
    pool.shutdown(wait=True)  # the worker ended with the queue drained
    assert [w["status"] for w in cmlray.list_workers() if w["name"] == "drop-1"] == ["succeeded"]

    with cmlray.Executor(max_workers=2, cpu=0.5, memory=0.2, name="keep") as pool:
        kept = [pool.submit(time.sleep, 0.05) for _ in range(6)]
        pool.shutdown(wait=True)  # without cancel_futures every call runs
        assert all(f.done() and not f.cancelled() for f in kept)


def test_a_dead_worker_puts_its_call_back_and_a_killer_call_fails(tmp_path: Path) -> None:
    marker = tmp_path / "died-once"

    def die_once(x: int) -> int:
        if not marker.exists():
            marker.touch()
            os._exit(9)  # the worker's program dies holding this call
        return x * 10

    def always_die() -> None:
        os._exit(9)

    with cmlray.Executor(max_workers=1, cpu=0.5, memory=0.2, max_attempts=2, name="dies") as pool:
        assert pool.submit(die_once, 4).result(timeout=120) == 40  # on a replacement worker
        killer = pool.submit(always_die)
        with pytest.raises(cmlray.WorkerError, match="the call failed: its worker dies-"):
            killer.result(timeout=120)
        assert pool.submit(abs, -5).result(timeout=120) == 5  # the executor carries on
    names = [w["name"] for w in cmlray.list_workers() if w["name"].startswith("dies-")]
    assert len(names) >= 3  # the first died, a replacement died, one more served the rest


def test_bad_arguments_are_refused_before_anything_starts() -> None:
    before = len(cmlray.list_workers())
    with pytest.raises(ValueError, match="max_workers"):
        cmlray.Executor(max_workers=0)
    with pytest.raises(ValueError, match="cpu"):
        cmlray.Executor(cpu=-1)
    with pytest.raises(ValueError, match="chunksize"):
        cmlray.Executor().map(str, [1], chunksize=0)
    assert len(cmlray.list_workers()) == before


AFTER_SHUTDOWN = """
import time, cmlray, ray
from cmlray import _lifecycle
cmlray.init(num_cpus=2)
pool = cmlray.Executor(max_workers=1, cpu=1, memory=0.2)
assert pool.submit(pow, 2, 5).result(timeout=120) == 32
slow = pool.submit(time.sleep, 3)
pool.shutdown(wait=False)       # the executor's threads go on in the background
cmlray.shutdown()
time.sleep(2)                   # they notice the session has ended
print(ray.is_initialized(), _lifecycle.current(create=False) is None, slow.done())
"""


def test_an_executor_left_running_starts_nothing_once_its_session_ends() -> None:
    # In a process of its own: the module's session stays up meanwhile.
    done = subprocess.run([sys.executable, "-c", AFTER_SHUTDOWN], capture_output=True,
                          text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["False", "True", "True"], done.stderr[-3000:]
    assert "Logging error" not in done.stderr and "ray.init" not in done.stderr
