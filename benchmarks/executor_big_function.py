"""Benchmark: a notebook's function that reads a big global, through each executor.

A function defined in a notebook (``__main__``) is pickled by value by
cloudpickle, with the globals it uses. Here: 200 calls of ``read_big(i)``,
which reads one element of a 20 MB global array, through 2 workers on 2
CPUs. Each (side, round) runs in a fresh child process, sides taking turns;
this module is registered with cloudpickle to travel by value, as a
notebook's functions do. Two windows per side: the first ``map`` (the
workers start inside it, as each side starts them on first use) and a
second ``map`` on the same workers. The array exists before either window
(the user's data); every result is checked.

- **cmlray.Executor.map**: the function travels to the workers once
  (``cmlray/_shipfn.py``); before that it went with every call.
- **ProcessPoolExecutor(2).map** with fork: the workers inherit the global
  and the function is pickled by reference (the floor).
- **joblib Parallel(n_jobs=2) on cmlray's backend** (``cmlray/joblib.py``):
  a batch's big functions travel once too.
- **joblib Parallel(n_jobs=2)** (loky): cloudpickles its batches.

A table is printed; everything goes to ``benchmarks/results/executor_big_function.json``.

Usage: ``python benchmarks/executor_big_function.py [--rounds N] [--quick]``
(default 3 rounds; ``--quick``: 1 round).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import _common as common
from _common import Json

CALLS, WORKERS, BIG_BYTES = 200, 2, 20 << 20
SIDES = ("executor", "joblib_cmlray", "ppe", "loky")
RESULTS_PATH = common.RESULTS_DIR / "executor_big_function.json"
LABELS = {
    "executor": "cmlray.Executor(2).map",
    "joblib_cmlray": "joblib Parallel(n_jobs=2) on cmlray's backend",
    "ppe": "ProcessPoolExecutor(2).map (fork)",
    "loky": "joblib Parallel(n_jobs=2) (loky)",
}
BIG: Any = None  # the notebook's global: made in the child, before the windows


def read_big(i: int) -> float:
    return float(BIG[i])


def _by_value() -> None:
    """This module travels by value, as a notebook's functions do (joblib uses cloudpickle too)."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _windows(run: Callable[[], list[float]], began: float) -> tuple[float, float]:
    first = run()
    middle = time.perf_counter()
    second = run()
    end = time.perf_counter()
    expected = [float(BIG[i]) for i in range(CALLS)]
    if first != expected or second != expected:
        raise RuntimeError("wrong results")
    return middle - began, end - middle


def _cmlray() -> tuple[float, float]:
    import cmlray

    cmlray.init(num_cpus=WORKERS, console=common.quiet_console())
    try:
        began = time.perf_counter()
        with cmlray.Executor(max_workers=WORKERS, cpu=1, memory=1) as pool:
            return _windows(lambda: list(pool.map(read_big, range(CALLS))), began)
    finally:
        cmlray.shutdown()


def _joblib_cmlray() -> tuple[float, float]:
    import joblib

    import cmlray
    import cmlray.joblib  # (registers the backend)

    cmlray.init(num_cpus=WORKERS, console=common.quiet_console())
    backend = joblib.parallel_backend("cmlray", n_jobs=WORKERS, cpu=1, memory=1)
    try:
        began = time.perf_counter()
        with backend, joblib.Parallel(n_jobs=WORKERS) as parallel:
            calls = lambda: (joblib.delayed(read_big)(i) for i in range(CALLS))  # noqa: E731
            return _windows(lambda: list(parallel(calls())), began)
    finally:
        cmlray.shutdown()


def _process_pool() -> tuple[float, float]:
    import concurrent.futures as cf
    import multiprocessing

    began = time.perf_counter()
    context = multiprocessing.get_context("fork")
    with cf.ProcessPoolExecutor(WORKERS, mp_context=context) as pool:
        return _windows(lambda: list(pool.map(read_big, range(CALLS))), began)


def _loky() -> tuple[float, float]:
    from joblib import Parallel, delayed

    began = time.perf_counter()
    with Parallel(n_jobs=WORKERS) as parallel:
        return _windows(lambda: list(parallel(delayed(read_big)(i) for i in range(CALLS))), began)


def child(side: str) -> Json:
    import numpy as np

    global BIG
    BIG = np.random.default_rng(0).random(BIG_BYTES // 8)
    _by_value()
    runs = {"executor": _cmlray, "joblib_cmlray": _joblib_cmlray, "ppe": _process_pool,
            "loky": _loky}  # fmt: skip
    first_s, second_s = runs[side]()
    return {"side": side, "first_s": first_s, "second_s": second_s}


def said(result: Json) -> str:
    """A child's result in a progress line."""
    return f"{result['first_s']:.3f} s, then {result['second_s']:.3f} s"


def summarize(children: Sequence[Json]) -> Json:
    table = common.medians_by_side(children, SIDES, ("first_s", "second_s"))
    ours = table["executor"]
    return {
        "table": table,
        "executor_vs_ppe_first": ours["first_s"] / table["ppe"]["first_s"],
        "executor_vs_loky_first": ours["first_s"] / table["loky"]["first_s"],
        "executor_vs_loky_second": ours["second_s"] / table["loky"]["second_s"],
    }


def print_table(summary: Json) -> None:
    from rich.table import Table

    title = f"{CALLS} calls of a function reading a {BIG_BYTES >> 20} MB global, 2 workers"
    table = Table(title=title + " (median of rounds)")
    for column in ("side", "first map (workers start)", "second map", "first / Executor's"):
        table.add_column(column, justify="left" if column == "side" else "right")
    ours = summary["table"]["executor"]["first_s"]
    for side in SIDES:
        row = summary["table"][side]
        table.add_row(LABELS[side], f"{row['first_s']:.3f} s", f"{row['second_s']:.3f} s",
                      f"{row['first_s'] / ours:.2f}")  # fmt: skip
    common.table_console(120).print(table)


def main(argv: Sequence[str] | None = None) -> int:
    return common.sides_main(
        argv, __doc__,
        script=__file__, sides=SIDES, said=said, child=child,
        summarize=summarize, show=print_table,
        plan=lambda rounds: {
            "rounds": rounds, "calls": CALLS, "big_bytes": BIG_BYTES, "sides": SIDES
        },
        results_path=RESULTS_PATH,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
