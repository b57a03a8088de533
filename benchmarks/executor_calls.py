"""Benchmark: cmlray.Executor against the executors a user would pick, same run.

2,000 calls of 5 ms of CPU each (a busy loop; the ideal is 2,000 x 5 ms / 2
cores = 5.0 s) through 2 workers on 2 CPUs, each (side, round) in a fresh
child process, sides taking turns, medians over rounds. Every window is
timed from before the first call is submitted to every result in hand, and
holds the workers' start where the side starts them on first use:

- **cmlray.Executor**, ``submit`` per call, results via ``as_completed``:
  its 2 workers start with the first call (inside the window), right
  after ``init``: the end of the session's start (its node agent, the
  zygote its workers are forked from) overlaps the window.
- **cmlray.Executor, session settled**: the same after an untimed second
  past ``init``, as a notebook's session has settled by the time of its
  first call (both are reported: the pause matters).
- **cmlray.Executor.map**, ``chunksize=25``.
- **ProcessPoolExecutor(2)**, ``submit`` per call (forked workers, started
  inside the window) and ``map(chunksize=25)``.
- **Ray tasks**, one per call (``ray.remote(num_cpus=1)``), pool warm.
- **Dask futures**, ``client.submit`` per call on a warm ``LocalCluster`` of
  2 worker processes.

A table is printed; everything goes to ``benchmarks/results/executor_calls.json``.

Usage: ``python benchmarks/executor_calls.py [--rounds N] [--quick]``
(default 3 rounds; ``--quick``: 1 round, a tenth of the calls).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import functools
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import _common as common
import queue_throughput as peers
from _common import Json

CALLS, CHUNK, ITEM_S = 2_000, 25, 0.005
SIDES = ("executor", "executor_settled", "executor_map", "ppe", "ppe_map", "ray_tasks", "dask")
SETTLE_S = 1.0
RESULTS_PATH = common.RESULTS_DIR / "executor_calls.json"
LABELS = {
    "executor": "cmlray.Executor, submit per call (workers start inside)",
    "executor_settled": "cmlray.Executor, the same, the session settled",
    "executor_map": f"cmlray.Executor.map, chunksize={CHUNK}",
    "ppe": "ProcessPoolExecutor(2), submit per call (forked inside)",
    "ppe_map": f"ProcessPoolExecutor(2).map, chunksize={CHUNK}",
    "ray_tasks": "Ray tasks, one per call (warm pool)",
    "dask": "Dask client.submit per call (2 worker processes, warm)",
}


def _cmlray(n: int, mapped: bool, settled: bool = False) -> float:
    import cloudpickle

    import cmlray

    cloudpickle.register_pickle_by_value(peers)  # the workers cannot import benchmarks/
    cmlray.init(num_cpus=peers.NUM_CPUS, console=common.quiet_console())
    try:
        if settled:
            time.sleep(SETTLE_S)  # untimed: the session's start has ended
        began = time.perf_counter()
        with cmlray.Executor(max_workers=peers.WORKERS, cpu=1, memory=0.5) as pool:
            return _drive(pool, n, mapped, began)
    finally:
        cmlray.shutdown()


def _process_pool(n: int, mapped: bool) -> float:
    import multiprocessing

    began = time.perf_counter()
    context = multiprocessing.get_context("fork")
    with cf.ProcessPoolExecutor(peers.WORKERS, mp_context=context) as pool:
        return _drive(pool, n, mapped, began)


def _drive(pool: cf.Executor, n: int, mapped: bool, began: float) -> float:
    """Run the calls through ``pool`` (``map`` or ``submit`` + ``as_completed``), checked.

    Returns the seconds since ``began`` to every result in hand (the pool's
    shutdown is not in the window).
    """
    call = functools.partial(peers.busy, ITEM_S)
    if mapped:
        results = list(pool.map(call, range(n), chunksize=CHUNK))
    else:
        futures = [pool.submit(call, i) for i in range(n)]
        results = [f.result() for f in cf.as_completed(futures)]
    elapsed = time.perf_counter() - began
    peers._check(results, n)
    return elapsed


def _dask(n: int) -> float:
    with common.dask_client(peers.WORKERS) as client:
        call = peers.make_fn(ITEM_S)
        client.gather(client.map(call, [-1, -2]))  # the workers, warm
        began = time.perf_counter()
        results = client.gather([client.submit(call, i, pure=False) for i in range(n)])
        elapsed = time.perf_counter() - began
    peers._check(results, n)
    return elapsed


def child(side: str, n: int) -> Json:
    runs: dict[str, Callable[[], float]] = {
        "executor": lambda: _cmlray(n, mapped=False),
        "executor_settled": lambda: _cmlray(n, mapped=False, settled=True),
        "executor_map": lambda: _cmlray(n, mapped=True),
        "ppe": lambda: _process_pool(n, mapped=False),
        "ppe_map": lambda: _process_pool(n, mapped=True),
        "ray_tasks": lambda: peers._ray(n, ITEM_S, 1),
        "dask": lambda: _dask(n),
    }
    return {"side": side, "n": n, "elapsed_s": runs[side]()}


def measure(rounds: int, n: int, children: list[Json]) -> None:
    for index in range(rounds):
        for side in common.in_turns(index, SIDES):
            result = common.spawn_child(__file__, f"{side}:{n}")
            children.append(result)
            common.progress(f"round {index + 1} {side}: {result['elapsed_s']:.3f} s")


def summarize(children: Sequence[Json], n: int) -> Json:
    table = {}
    for side in SIDES:
        runs = [c["elapsed_s"] for c in children if c["side"] == side]
        table[side] = {"median_s": statistics.median(runs), "runs_s": runs}
    ideal = n * ITEM_S / peers.NUM_CPUS
    ours = table["executor"]["median_s"]
    return {
        "table": table,
        "ideal_s": ideal,
        "executor_over_ideal": ours / ideal - 1,
        "executor_vs_ppe": ours / table["ppe"]["median_s"],
        "executor_settled_vs_ppe": table["executor_settled"]["median_s"] / table["ppe"]["median_s"],
        "executor_map_vs_ppe_map": table["executor_map"]["median_s"] / table["ppe_map"]["median_s"],
    }


def print_table(summary: Json, n: int) -> None:
    from rich.table import Table

    table = Table(title=f"{n:,} calls of 5 ms, 2 workers on 2 CPUs (median of rounds)")
    for column in ("side", "seconds", "calls/s", "over the ideal", "side / Executor"):
        table.add_column(column, justify="left" if column == "side" else "right")
    ours = summary["table"]["executor"]["median_s"]
    for side in SIDES:
        seconds = summary["table"][side]["median_s"]
        table.add_row(LABELS[side], f"{seconds:.3f}", f"{n / seconds:,.0f}",
                      f"{(seconds / summary['ideal_s'] - 1) * 100:+.1f}%",
                      f"{seconds / ours:.2f}")  # fmt: skip
    common.table_console(120).print(table)


def calls(args: argparse.Namespace) -> int:
    """The calls of a run: a tenth with ``--quick``."""
    return CALLS // 10 if args.quick else CALLS


def child_mode(mode: str) -> Json:
    side, n = mode.split(":")
    return child(side, int(n))


def report(args: argparse.Namespace, children: list[Json]) -> Json:
    summary = summarize(children, calls(args))
    print_table(summary, calls(args))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    return common.rounds_main(
        argv, __doc__, "1 round, a tenth of the calls",
        child=child_mode,
        measure=lambda args, rounds, children: measure(rounds, calls(args), children),
        report=report,
        plan=lambda args, rounds: {
            "rounds": rounds, "calls": calls(args), "item_s": ITEM_S, "sides": SIDES
        },
        results_path=RESULTS_PATH,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
