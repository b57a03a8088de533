"""Benchmark: cmlray's parameter queue against what a user would really pick, same run.

Two workloads, each through 2 workers on 2 CPUs: 20,000 no-op items
(``lambda x: x``) and 2,000 items of 5 ms of CPU each (a busy loop: the
ideal is 2,000 x 5 ms / 2 cores = 5.0 s). Each (workload, side, round) runs
in a fresh child process; sides take turns going first, round after round;
results are medians over rounds. What each side's window holds (timed with
``time.perf_counter``, from before the first item is handed over to all
results in the session):

- **cmlray** (cold): ``Queue.put_many`` + ``close``, ``launch_workers(2,
  cpu=1, memory=0.5, code=serve)``, ``join``, ``results`` (checked): the
  workers' start is inside the window. Before it, the session has settled
  (an untimed second after ``init``), as Ray's side has warmed its pool:
  its home agent has started the zygote its Python workers are forked from.
- **cmlray, launched right after init**: the same with no pause: the
  zygote's start (about 60 ms) overlaps the window. Both are reported.
- **cmlray, warm**: the same, with the two workers already launched and
  waiting on the queue before the window (as Ray's and Dask's workers are).
- **Ray tasks**: ``ray.remote(num_cpus=1)``, one task per item, ``ray.get``;
  Ray's pool workers started before the window (``ray.init`` and one
  warm-up task each).
- **Ray tasks, batched**: the same, 100 items per task (what a Ray expert writes).
- **Dask futures**: ``client.map`` then ``client.gather`` on a
  ``LocalCluster(n_workers=2, threads_per_worker=1)`` started before the window.
- **joblib (loky)**: ``Parallel(n_jobs=2)(delayed(fn)(x) ...)``, its workers
  started inside the window (a fresh process's first call), automatic batching.
- **multiprocessing.Pool(2)** (the floor): ``imap_unordered`` with
  ``Pool.map``'s chunk size (n / 8); forked workers started inside the window.
- ``ray.util.queue`` with one ``get`` per item (the old baseline), no-op
  items only, one round: a footnote.

Goals (issue 22): 20,000 no-op items at least as fast as batched Ray tasks;
2,000 items of 5 ms within 3% of the ideal and ahead of the pool and loky.
A table is printed; everything goes to ``benchmarks/results/queue_throughput.json``.

Usage: ``python benchmarks/queue_throughput.py [--rounds N] [--quick]``
(default 3 rounds; ``--quick``: 1 round, a tenth of the items).
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import _common as common
from _common import Json

NUM_CPUS = 2
WORKERS = 2
ITEM_S = 0.005
WORKLOADS = {"noop": 20_000, "work5ms": 2_000}
SIDES = (
    "cmlray", "cmlray_at_once", "cmlray_warm", "ray_tasks", "ray_batched", "dask", "loky", "pool"
)  # fmt: skip
BATCH = 100
RAW_QUEUE_ITEMS = 20_000
SETTLE_S = 1.0
RESULTS_PATH = common.RESULTS_DIR / "queue_throughput.json"
SERVE = """
import time, cmlray.worker
def fn(x):
    if {work!r}:
        end = time.perf_counter() + {work!r}
        while time.perf_counter() < end:
            pass
    return x
cmlray.worker.serve({name!r}, fn)
"""


def make_fn(work_s: float) -> Callable[[Any], Any]:
    """The item's function: a busy loop of ``work_s`` (none for no-op), returning the item."""

    def fn(x: Any) -> Any:
        if work_s:
            end = time.perf_counter() + work_s
            while time.perf_counter() < end:
                pass
        return x

    return fn


def busy(work_s: float, x: Any) -> Any:
    """``make_fn``'s function at module level: what ``multiprocessing`` can pickle."""
    return make_fn(work_s)(x)


def _check(results: Sequence[Any], n: int) -> None:
    if sorted(results) != list(range(n)):
        raise RuntimeError(f"wrong results: {len(results)} of {n}")


# --------------------------------------------------------------------------
# Children: one side, one workload, one window.
# --------------------------------------------------------------------------


def _cmlray(n: int, work_s: float, start: str) -> float:
    """cmlray's window; ``start``: "cold", "at_once" (no pause after init) or "warm"."""
    import cmlray

    cmlray.init(num_cpus=NUM_CPUS, console=common.quiet_console())
    try:
        q = cmlray.Queue("bench")
        code = SERVE.format(work=work_s, name="bench")
        workers = []
        warm = start == "warm"
        if warm:
            workers = cmlray.launch_workers(WORKERS, cpu=1, memory=0.5, code=code)
            cmlray.await_workers(workers, wait_for_completion=False, timeout_seconds=120)
        if start != "at_once":
            time.sleep(SETTLE_S)  # untimed: the session settled (warm: the workers wait)
        began = time.perf_counter()
        q.put_many(range(n))
        q.close()
        if not warm:
            workers = cmlray.launch_workers(WORKERS, cpu=1, memory=0.5, code=code)
        q.join()
        results = q.results()
        elapsed = time.perf_counter() - began
        if not all(r.ok for r in results):
            raise RuntimeError("failed items")
        _check([r.result for r in results], n)
        cmlray.await_workers(workers, timeout_seconds=120)
        return elapsed
    finally:
        cmlray.shutdown()


def _ray(n: int, work_s: float, batch: int) -> float:
    with common.ray_session(NUM_CPUS):  # (token auth set before Ray is imported)
        import ray

        fn = make_fn(work_s)

        @ray.remote(num_cpus=1)
        def run(items: list[Any]) -> list[Any]:
            return [fn(x) for x in items]

        ray.get([run.remote([]) for _ in range(WORKERS)])  # the pool's workers, warm
        began = time.perf_counter()
        chunks = [list(range(i, min(n, i + batch))) for i in range(0, n, batch)]
        results = [x for part in ray.get([run.remote(c) for c in chunks]) for x in part]
        elapsed = time.perf_counter() - began
    _check(results, n)
    return elapsed


def _dask(n: int, work_s: float) -> float:
    with common.dask_client(WORKERS) as client:
        fn = make_fn(work_s)
        client.gather(client.map(fn, [-1, -2]))  # the workers, warm
        began = time.perf_counter()
        results = client.gather(client.map(fn, range(n)))
        elapsed = time.perf_counter() - began
    _check(results, n)
    return elapsed


def _loky(n: int, work_s: float) -> float:
    from joblib import Parallel, delayed

    fn = make_fn(work_s)
    began = time.perf_counter()
    results = Parallel(n_jobs=WORKERS, backend="loky")(delayed(fn)(x) for x in range(n))
    elapsed = time.perf_counter() - began
    _check(results, n)
    return elapsed


def _pool(n: int, work_s: float) -> float:
    import multiprocessing

    fn = functools.partial(busy, work_s)
    began = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(WORKERS) as pool:
        results = list(pool.imap_unordered(fn, range(n), chunksize=max(1, math.ceil(n / 8))))
    elapsed = time.perf_counter() - began
    _check(results, n)
    return elapsed


def _ray_queue(n: int) -> float:
    """The old baseline: ``ray.util.queue``, one ``get`` per item, 2 actors."""
    with common.ray_session(NUM_CPUS):  # (token auth set before Ray is imported)
        import ray
        from ray.util.queue import Empty, Queue

        q = Queue(actor_options={"num_cpus": 0})
        q.put_nowait_batch(list(range(n)))

        @ray.remote(num_cpus=1)
        class Getter:
            def run(self, queue: Any) -> list[Any]:
                out = []
                while True:
                    try:
                        out.append(queue.get(block=True, timeout=0.1))
                    except Empty:
                        return out

        began = time.perf_counter()
        getters = [Getter.remote() for _ in range(WORKERS)]
        results = [x for part in ray.get([g.run.remote(q) for g in getters]) for x in part]
        elapsed = time.perf_counter() - began
    _check(results, n)
    return elapsed


def child(side: str, workload: str, n: int) -> Json:
    work_s = ITEM_S if workload == "work5ms" else 0.0
    runs: dict[str, Callable[[], float]] = {
        "cmlray": lambda: _cmlray(n, work_s, "cold"),
        "cmlray_at_once": lambda: _cmlray(n, work_s, "at_once"),
        "cmlray_warm": lambda: _cmlray(n, work_s, "warm"),
        "ray_tasks": lambda: _ray(n, work_s, 1),
        "ray_batched": lambda: _ray(n, work_s, BATCH),
        "dask": lambda: _dask(n, work_s),
        "loky": lambda: _loky(n, work_s),
        "pool": lambda: _pool(n, work_s),
        "ray_queue": lambda: _ray_queue(n),
    }
    elapsed = runs[side]()
    return {"side": side, "workload": workload, "n": n, "elapsed_s": elapsed}


# --------------------------------------------------------------------------
# Parent.
# --------------------------------------------------------------------------


def measure(rounds: int, scale: float, children: list[Json]) -> None:
    for index in range(rounds):
        for workload, full in WORKLOADS.items():
            n = max(10, int(full * scale))
            for side in common.in_turns(index, SIDES):
                result = common.spawn_child(__file__, f"{side}:{workload}:{n}")
                children.append(result)
                common.progress(
                    f"round {index + 1} {workload} {side}: {result['elapsed_s']:.3f} s"
                    f" ({n / result['elapsed_s']:,.0f} items/s)"
                )
    n = max(10, int(RAW_QUEUE_ITEMS * scale))
    children.append(common.spawn_child(__file__, f"ray_queue:noop:{n}"))
    common.progress(f"ray.util.queue: {children[-1]['elapsed_s']:.3f} s")


def summarize(children: Sequence[Json]) -> Json:
    table: dict[str, dict[str, Json]] = {}
    for workload in WORKLOADS:
        for side in (*SIDES, "ray_queue"):
            runs = [c for c in children if (c["side"], c["workload"]) == (side, workload)]
            if not runs:
                continue
            seconds = statistics.median(c["elapsed_s"] for c in runs)
            table.setdefault(workload, {})[side] = {
                "n": runs[0]["n"], "median_s": seconds, "items_per_s": runs[0]["n"] / seconds,
                "runs_s": [c["elapsed_s"] for c in runs],
            }  # fmt: skip
    noop, work = table["noop"], table["work5ms"]
    ideal = work["cmlray"]["n"] * ITEM_S / NUM_CPUS
    return {
        "table": table,
        "ideal_work5ms_s": ideal,
        "goals": {
            "noop_cmlray_vs_ray_batched": noop["cmlray"]["median_s"]
            / noop["ray_batched"]["median_s"],
            "noop_cmlray_at_once_vs_ray_batched": noop["cmlray_at_once"]["median_s"]
            / noop["ray_batched"]["median_s"],
            "noop_cmlray_warm_vs_ray_batched": noop["cmlray_warm"]["median_s"]
            / noop["ray_batched"]["median_s"],
            "work5ms_cmlray_at_once_over_ideal": work["cmlray_at_once"]["median_s"] / ideal - 1,
            "work5ms_cmlray_over_ideal": work["cmlray"]["median_s"] / ideal - 1,
            "work5ms_cmlray_vs_pool": work["cmlray"]["median_s"] / work["pool"]["median_s"],
            "work5ms_cmlray_vs_loky": work["cmlray"]["median_s"] / work["loky"]["median_s"],
        },
    }


LABELS = {
    "cmlray": "cmlray Queue, 2 workers (their start in the window)",
    "cmlray_at_once": "cmlray Queue, the same launched right after init",
    "cmlray_warm": "cmlray Queue, 2 workers already waiting",
    "ray_tasks": "Ray tasks, one per item (warm pool)",
    "ray_batched": f"Ray tasks, {BATCH} items per task (warm pool)",
    "dask": "Dask futures, client.map (2 worker processes, warm)",
    "loky": "joblib (loky) Parallel(n_jobs=2)",
    "pool": "multiprocessing.Pool(2).imap_unordered (the floor)",
    "ray_queue": "ray.util.queue, one get per item (footnote)",
}


def print_table(summary: Json) -> None:
    from rich.table import Table

    table = Table(
        title=f"Queue throughput, {WORKERS} workers on {NUM_CPUS} CPUs (median of rounds)"
    )
    table.add_column("side")
    for workload, full in WORKLOADS.items():
        table.add_column(f"{workload} ({full:,} items)", justify="right")
        table.add_column("cmlray / side", justify="right")
    data = summary["table"]
    for side in (*SIDES, "ray_queue"):
        cells = [LABELS[side]]
        for workload in WORKLOADS:
            row = data[workload].get(side)
            mine = data[workload]["cmlray"]["median_s"]
            if row is None:
                cells += ["-", "-"]
            else:
                cells += [f"{row['items_per_s']:,.0f}/s ({row['median_s']:.3f} s)",
                          f"{mine / row['median_s']:.2f}"]  # fmt: skip
        table.add_row(*cells)
    console = common.table_console(150)
    console.print(table)
    goals = summary["goals"]
    behind_peers = max(goals["work5ms_cmlray_vs_pool"], goals["work5ms_cmlray_vs_loky"])
    console.print(
        f"work5ms: cmlray {goals['work5ms_cmlray_over_ideal'] * 100:+.1f}% of the ideal"
        f" {summary['ideal_work5ms_s']:.2f} s (goal <= +3%"
        f" {common.verdict(goals['work5ms_cmlray_over_ideal'] <= 0.03)}); vs pool"
        f" {goals['work5ms_cmlray_vs_pool']:.3f}x, vs loky {goals['work5ms_cmlray_vs_loky']:.3f}x"
        f" (goal < 1 {common.verdict(behind_peers < 1)})."
        f" noop: cmlray / batched Ray tasks {goals['noop_cmlray_vs_ray_batched']:.2f}x cold (goal"
        f" <= 1 {common.verdict(goals['noop_cmlray_vs_ray_batched'] <= 1)}),"
        f" {goals['noop_cmlray_at_once_vs_ray_batched']:.2f}x launched right after init,"
        f" {goals['noop_cmlray_warm_vs_ray_batched']:.2f}x warm."
        " work5ms launched right after init:"
        f" {goals['work5ms_cmlray_at_once_over_ideal'] * 100:+.1f}% of the ideal."
    )


def scale(args: argparse.Namespace) -> float:
    """The share of each workload's items a run puts: a tenth with ``--quick``."""
    return 0.1 if args.quick else 1.0


def child_mode(mode: str) -> Json:
    side, workload, n = mode.split(":")
    return child(side, workload, int(n))


def main(argv: Sequence[str] | None = None) -> int:
    return common.rounds_main(
        argv, __doc__, "1 round, a tenth of the items",
        child=child_mode,
        measure=lambda args, rounds, children: measure(rounds, scale(args), children),
        report=common.summarized(summarize, print_table),
        plan=lambda args, rounds: {
            "rounds": rounds, "scale": scale(args), "workloads": WORKLOADS, "sides": SIDES
        },
        results_path=RESULTS_PATH,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
