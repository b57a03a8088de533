"""The parameter queue end to end: real workers serving a queue hosted by the session's agent."""

from __future__ import annotations

import os
import signal
import textwrap
import time
from pathlib import Path

import pytest

import cmlray
from cmlray import _lifecycle
from cmlray import queue as queue_module
from tests.support.console import Captured

pytestmark = pytest.mark.usefixtures("session")

SERVE = "import cmlray.worker\ncmlray.worker.serve({name!r}, {fn})\n"


def serve(name: str, fn: str, n: int = 2, **kwargs: object) -> list[dict]:
    code = textwrap.dedent(kwargs.pop("setup", "")) + SERVE.format(name=name, fn=fn)  # type: ignore[arg-type]
    return cmlray.launch_workers(n, cpu=0.5, memory=0.1, code=code, **kwargs)


def test_items_are_served_and_results_kept() -> None:
    q = cmlray.Queue("squares")
    q.put_many(range(500))
    q.put(500)
    q.close()
    workers = serve("squares", "lambda x: x * x")
    q.join(timeout=120)
    results = q.results()
    assert sorted((r.item, r.result) for r in results) == [(i, i * i) for i in range(501)]
    assert all(r.ok and r.attempts == 1 and r.error is None for r in results)
    assert q.stats() == {
        "pending": 0,
        "leased": 0,
        "done": 501,
        "failed": 0,
        "requeued": 0,
        "total": 501,
    }
    done = cmlray.await_workers(workers)
    assert len(done["workers"]) == 2, done["failures"]


def test_any_payload_closures_and_ten_megabyte_bytes() -> None:
    q = cmlray.Queue("payloads")
    offset = 7
    big = os.urandom(10 << 20)
    q.put_many([lambda x: x + offset, big, {"nested": [1, (2, 3)]}])
    q.close()
    setup = """
    import hashlib
    def handle(item):
        if callable(item):
            return item(1)
        if isinstance(item, bytes):
            return item[::-1]
        return item
    """
    serve("payloads", "handle", n=1, setup=setup)
    q.join(timeout=120)
    results = {type(r.item).__name__: r.result for r in q.results()}
    assert results["function"] == 8
    assert results["bytes"] == big[::-1]
    assert results["dict"] == {"nested": [1, (2, 3)]}


def test_each_result_carries_its_item_as_it_was_put() -> None:
    """The session keeps the items (results come home without them): values as put."""
    q = cmlray.Queue("as-put")
    params = {"alpha": 0.1}
    q.put_many([7, "seven", b"7", params, 7.5])
    params["alpha"] = 99.0  # changed after the put
    q.close()
    with pytest.raises(cmlray.QueueError, match=r"is closed"):
        q.put("refused")
    serve("as-put", "repr", n=1)
    q.join(timeout=120)
    assert sorted((repr(r.item), r.result) for r in q.results()) == sorted(
        (repr(item), repr(item)) for item in [7, "seven", b"7", {"alpha": 0.1}, 7.5]
    )


def test_raising_fn_is_retried_then_failed_with_traceback() -> None:
    q = cmlray.Queue("flaky", max_attempts=2)
    q.put_many(["ok", "boom"])
    q.close()
    setup = """
    def handle(item):
        if item == "boom":
            raise ValueError("cannot handle " + item)
        return item.upper()
    """
    serve("flaky", "handle", n=1, setup=setup)
    q.join(timeout=120)
    by_item = {r.item: r for r in q.results()}
    assert by_item["ok"].result == "OK"
    failed = by_item["boom"]
    assert not failed.ok and failed.attempts == 2
    assert failed.error == "ValueError: cannot handle boom"
    assert failed.traceback is not None  # with the source line, not only "<string>"
    assert 'File "<worker code>", line 4, in handle' in failed.traceback
    assert 'raise ValueError("cannot handle " + item)' in failed.traceback
    assert q.stats()["requeued"] == 1 and q.stats()["failed"] == 1


def test_tasks_iterator_for_a_loop_of_ones_own() -> None:
    q = cmlray.Queue("loop")
    q.put_many(range(20))
    q.close()
    code = textwrap.dedent(
        """
        import cmlray.worker
        seen = 0
        for task in cmlray.worker.tasks("loop"):
            with task:
                if task.item == 13:
                    raise KeyError(task.item)
                task.result = -task.item
            seen += 1
        print("seen", seen)
        """
    )
    workers = cmlray.launch_workers(1, cpu=0.5, memory=0.1, code=code)
    q.join(timeout=120)
    results = {r.item: r for r in q.results()}
    assert all(results[i].result == -i for i in range(20) if i != 13)
    assert not results[13].ok and results[13].error == "KeyError: 13"
    (worker,) = cmlray.await_workers(workers)["workers"]
    assert worker["tail"] == ["seen 22"]  # `with task` swallowed the 3 attempts' KeyErrors


class _SessionOnly:
    """An item whose unpickling imports a module only the session can import."""

    def __init__(self, module: str) -> None:
        self.module = module

    def __reduce__(self) -> tuple[object, ...]:
        import importlib

        return (importlib.import_module, (self.module,))


@pytest.mark.parametrize("loop", ["serve", "tasks"])
def test_an_item_a_worker_cannot_load_fails_alone(
    loop: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = f"cmlray_session_only_{loop}"
    (tmp_path / f"{module}.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # the session's path, not the worker's
    name = f"unloadable-{loop}"
    q = cmlray.Queue(name, max_attempts=1)
    q.put_many([1, _SessionOnly(module), 3])
    q.close()
    if loop == "serve":
        workers = serve(name, "lambda x: x * 10", n=1)
    else:
        code = textwrap.dedent(
            f"""
            import cmlray.worker
            for task in cmlray.worker.tasks({name!r}):
                with task:
                    task.result = task.item * 10
            print("loop ended")
            """
        )
        workers = cmlray.launch_workers(1, cpu=0.5, memory=0.1, code=code)
    q.join(timeout=120)
    results = q.results()
    assert sorted((r.item, r.result) for r in results if r.ok) == [(1, 10), (3, 30)]
    (failed,) = [r for r in results if not r.ok]
    assert failed.item.__name__ == module  # (it loads here: the session imports it)
    assert failed.error is not None and failed.error.startswith("ModuleNotFoundError")
    (worker,) = cmlray.await_workers(workers)["workers"]  # the program went on and ended well
    if loop == "tasks":
        assert worker["tail"] == ["loop ended"]


def test_results_are_read_from_the_queue_when_pushed_pages_go_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    session = _lifecycle.require()
    monkeypatch.setattr(session.queues, "received", lambda *page: None)  # every push lost
    monkeypatch.setattr(queue_module, "_PUSH_WAIT_S", 0.2)
    q = cmlray.Queue("unpushed")
    q.put_many(range(50))
    q.close()
    serve("unpushed", "lambda x: x + 1")
    q.join(timeout=120)
    results = q.results()
    assert sorted(r.result for r in results) == list(range(1, 51))
    assert [r.item + 1 for r in results] == [r.result for r in results]  # items came too
    assert len(q.results()) == 50  # read once, not twice


def test_a_result_the_session_cannot_load_fails_results_not_join() -> None:
    # join decodes results as they come (_wait_settled): a result it cannot load
    # is left for results(), which raises the real cause
    q = cmlray.Queue("unloadable")
    q.put_many(range(3))
    q.close()
    setup = """
    import sys, types
    only_here = sys.modules["only_here"] = types.ModuleType("only_here")
    exec("class Thing:\\n    pass", only_here.__dict__)
    """
    serve("unloadable", "lambda x: only_here.Thing() if x == 1 else x", n=1, setup=setup)
    q.join(timeout=120)
    with pytest.raises(ModuleNotFoundError, match="only_here"):
        q.results()


def test_as_completed_yields_every_result_then_ends() -> None:
    q = cmlray.Queue("stream")
    q.put_many(range(50))
    q.close()
    serve("stream", "lambda x: x + 1")
    assert sorted(r.result for r in q.as_completed(timeout=120)) == list(range(1, 51))


def test_as_completed_ends_when_drained_though_its_deadline_passed() -> None:
    q = cmlray.Queue("slow-reader")
    q.put_many(range(3))
    q.close()
    serve("slow-reader", "lambda x: x")
    assert len(list(q.as_completed(timeout=120))) == 3  # now every result is here, drained
    taken = []
    for result in q.as_completed(timeout=0.05):
        time.sleep(0.1)  # the caller's own work outlasts the deadline
        taken.append(result.result)
    assert sorted(taken) == [0, 1, 2]


def test_join_with_progress_draws_a_bar(captured: Captured) -> None:
    q = cmlray.Queue("shown")
    q.put_many(range(30))
    q.close()
    serve("shown", "lambda x: __import__('time').sleep(0.02)", n=1)
    q.join(timeout=120, progress=True)
    assert "shown" in captured.text() and "30/30" in captured.text()


def test_bad_input_errors() -> None:
    q = cmlray.Queue("strict")
    with pytest.raises(TypeError, match=r"item 1 cannot be pickled"):
        q.put_many([1, (x for x in range(3))])
    assert q.stats()["total"] == 0  # nothing of the failed batch was added
    q.put(1)
    q.close()
    with pytest.raises(cmlray.QueueError, match=r"queue 'strict' is closed"):
        q.put(2)
    with pytest.raises(cmlray.QueueError, match=r"already has a queue named 'strict'"):
        cmlray.Queue("strict")
    with pytest.raises(TimeoutError, match=r"queue 'strict'"):
        q.join(timeout=0.2, expect_more_workers=True)  # nobody serves it yet


def test_unknown_queue_name_in_a_worker_is_a_clear_failure() -> None:
    workers = serve("no-such-queue", "print", n=1)
    (failure,) = cmlray.await_workers(workers)["failures"]
    assert (
        failure["tail"][-1]
        == "cmlray.errors.QueueError: no queue named 'no-such-queue' in this session"
    )


def test_serve_outside_a_worker_says_so() -> None:
    from cmlray import worker

    with pytest.raises(cmlray.QueueError, match=r"only works inside a worker launched by cmlray"):
        worker.serve("anything", print)


def test_hung_worker_loses_its_lease() -> None:
    q = cmlray.Queue("hang", lease_timeout_s=1.0)
    q.put_many(["hang", "quick"])
    q.close()
    setup = textwrap.dedent(
        """
        import os, time
        def handle(item):
            if item == "hang" and os.environ["CDSW_ENGINE_ID"] == first:
                print("hanging", flush=True)
                time.sleep(600)
            return item
        """
    )
    # The first worker takes "hang" and never reports; after 1 s it goes to the second.
    first_worker = serve(
        "hang", "handle", n=1, setup="first = __import__('os').environ['CDSW_ENGINE_ID']\n" + setup
    )
    registry = _lifecycle.require().registry
    hanging = registry.get(first_worker[0]["id"]).tail
    assert registry.wait_for(lambda: "hanging" in hanging, 60)  # the first holds "hang"
    second = serve(
        "hang", "handle", n=1, setup="first = " + repr(first_worker[0]["id"]) + "\n" + setup
    )
    q.join(timeout=120)
    results = {r.item: r for r in q.results()}
    assert results["hang"].ok and results["hang"].attempts == 2
    assert q.stats()["requeued"] >= 1
    cmlray.stop_workers(*first_worker)
    assert cmlray.await_workers(second)["workers"]


@pytest.mark.slow
def test_chaos_killed_programs_lose_nothing() -> None:
    """1,000 items, 3 workers; SIGKILL two workers' programs mid-way: every item done once."""
    q = cmlray.Queue("chaos")
    q.put_many(range(1000))
    q.close()
    workers = serve("chaos", "lambda x: (__import__('time').sleep(0.005), x * 2)[1]", n=3)
    registry = _lifecycle.require().registry
    victims = {150: workers[0], 450: workers[1]}
    for count, _ in enumerate(q.as_completed(timeout=180), start=1):
        if count in victims:  # SIGKILL a worker's program while it holds items
            pid = registry.get(victims[count]["id"]).pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
    q.join(timeout=180)
    results = q.results()
    assert sorted(r.item for r in results) == list(range(1000))  # each exactly once
    assert all(r.ok and r.result == r.item * 2 for r in results)
    stats = q.stats()
    assert stats["done"] == 1000 and stats["requeued"] >= 1
    statuses = [w["status"] for w in cmlray.await_workers(workers)["failures"]]
    assert statuses == ["failed", "failed"]


def test_fn_worker_returns_a_result_and_closures_work() -> None:
    base = {"scale": 3}
    workers = cmlray.launch_workers(
        2, cpu=0.5, memory=0.1, fn=lambda x, y=0: x * base["scale"] + y, args=(5,), kwargs={"y": 1}
    )
    done = cmlray.await_workers(workers)["workers"]
    assert [w["result"] for w in done] == [16, 16]


def test_fn_worker_exception_lands_in_reason_and_tail() -> None:
    def explode() -> None:
        raise RuntimeError("went wrong")

    (failure,) = cmlray.await_workers(cmlray.launch_workers(1, cpu=0.5, memory=0.1, fn=explode))[
        "failures"
    ]
    assert failure["reason"] == "RuntimeError: went wrong (exit code 1)"
    assert failure["tail"][-1] == "RuntimeError: went wrong"
    assert failure["result"] is None


def test_join_fails_fast_when_no_live_worker_serves_the_queue() -> None:
    cmlray.stop_workers()  # nothing of earlier tests may count as a server
    q = cmlray.Queue("orphaned")
    q.put_many(range(300))
    q.close()
    workers = cmlray.launch_workers(2, cpu=0.25, memory=0.1, code="raise SystemExit(3)")
    with pytest.raises(cmlray.QueueError, match=r"300 items pending .* no live worker") as err:
        q.join(timeout=600)  # raises long before: the workers end within seconds
    assert "exit code 3" in str(err.value)  # says why the workers ended
    assert all(w["status"] == "failed" for w in cmlray.await_workers(workers)["failures"])
    with pytest.raises(cmlray.QueueError, match=r"no live worker"):
        list(q.as_completed())
    # Planning to launch more: the caller opts out and waits; then a server comes.
    with pytest.raises(TimeoutError):
        q.join(timeout=1, expect_more_workers=True)
    serve("orphaned", "lambda x: -x", n=1)
    q.join(timeout=120)
    assert sorted(r.result for r in q.results()) == sorted(-i for i in range(300))


def test_a_worker_serving_another_queue_does_not_count_as_a_server() -> None:
    cmlray.stop_workers()
    busy = cmlray.Queue("busy")  # open: its worker keeps serving it
    serve("busy", "lambda x: x", n=1)
    busy.put(1)
    assert next(iter(busy.as_completed(timeout=120))).result == 1
    lonely = cmlray.Queue("lonely")
    lonely.put_many(range(5))
    with pytest.raises(cmlray.QueueError, match=r"'lonely': 5 items pending"):
        lonely.join(timeout=600)
    busy.close()
    busy.join(timeout=120)
