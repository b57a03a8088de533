"""Benchmark: what each runtime takes from the cores while its two workers compute.

A sweep's trainers, a queue's workers: two processes compute on a 2-core
machine and whatever else runs beside them slows them. Each side runs in a
fresh child process (``--child SIDE``), sides taking turns round after
round, medians reported:

- **cmlray**: ``launch_workers(2, cpu=1, code=...)``, each program spinning.
- **cmlray, serving items**: the two workers serve a queue of items like a
  sweep's (``ITEM_CODE``: 50 ms of compute, a 75 KB file sent home, a line,
  a small result); the results that arrive in the window give the runtime's
  CPU an item, over the same run's median of the first side.
- **raw Ray**: two actors (``num_cpus=1``) spinning in a method; token
  auth, no dashboard, as ``benchmarks/_common.py: ray_init`` starts it.
- **loky**: ``joblib.Parallel(n_jobs=2)`` of two spinning calls (GridSearchCV's
  way).
- **multiprocessing.Pool(2)** (fork): the floor.

Measured once both workers spin: over ``WINDOW_S``, the CPU time (user +
system) of every thread of the child process and of every process below it,
from ``/proc``. A worker is a process whose busiest thread computed most of
the window; that thread's time is *work*, everything else (the session or
driver, the head's services, agents, the workers' other threads) is what the
runtime takes beside it: reported in milliseconds of CPU a second, and as the
share of the two cores left to the work. No issue sets a goal here: it
measures the floor a CPU-bound sweep pays (``benchmarks/sweep_vs_gridsearch.py``).

Usage: ``python benchmarks/runtime_floor.py [--rounds N] [--quick]`` (default
3 rounds; ``--quick``: 1 round); JSON in ``benchmarks/results/runtime_floor.json``.
"""

from __future__ import annotations

import glob
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import _common as common
from _common import Json

NUM_CPUS = 2
SETTLE_S = 2.0  # from the start until both workers spin (untimed)
WINDOW_S = 8.0
SPIN_S = SETTLE_S + WINDOW_S + 2.0  # each worker's wall time spinning
ITEM_S = 0.05  # the items side: each item's compute
ITEMS = int(SPIN_S / ITEM_S) * NUM_CPUS  # enough to keep both workers busy past the window
SIDES = ("cmlray", "cmlray_items", "ray", "loky", "pool")
RESULTS_PATH = common.RESULTS_DIR / "runtime_floor.json"
LABELS = {
    "cmlray": "cmlray, 2 workers of 1 CPU",
    "cmlray_items": "cmlray, 2 workers serving items of 50 ms",
    "ray": "raw Ray, 2 actors of 1 CPU",
    "loky": "joblib loky, n_jobs=2",
    "pool": "multiprocessing.Pool(2), fork",
}


def spin(seconds: float) -> int:
    """Compute for ``seconds`` of wall time; the loop count (a worker's work)."""
    end, count = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        count += 1
    return count


SPIN_CODE = """
import time
end = time.monotonic() + {spin_s!r}
while time.monotonic() < end:
    pass
"""  # a cmlray worker's program: ``spin`` without importing this module


ITEM_CODE = """
import os, tempfile, time
import cmlray.worker
BLOB = os.urandom(75_000)
def item(i):
    end = time.monotonic() + {item_s!r}
    while time.monotonic() < end:
        pass
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "fold.bin")
        with open(path, "wb") as f:
            f.write(BLOB)
        cmlray.worker.send_file(path, os.path.join({home!r}, str(i) + ".bin"))
    print("item", i, "done")
    return {{"item": i, "score": 0.97}}
cmlray.worker.serve({queue!r}, item)
"""  # a sweep's item in small: compute, a 75 KB file sent home, a line, a small result


def _thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of ``pid``, by ``/proc/PID/task/TID`` path.

    From ``schedstat`` (nanoseconds on the CPU): ``stat``'s clock ticks are
    10 ms here, too coarse for a few milliseconds a second.
    """
    threads: dict[str, float] = {}
    for task in glob.glob(f"/proc/{pid}/task/*"):
        try:
            with open(f"{task}/schedstat") as f:
                threads[task] = int(f.read().split()[0]) / 1e9
        except OSError:  # ended meanwhile
            continue
    return threads


def _named(task: str) -> str:
    """``process name/thread name`` of a ``/proc/PID/task/TID`` path ("?" once ended)."""
    try:
        with open(f"{task.rsplit('/task/', 1)[0]}/comm") as f, open(f"{task}/comm") as g:
            return f"{f.read().strip()}/{g.read().strip()}"
    except OSError:
        return "?"


def _tree_pids() -> list[int]:
    import psutil

    me = psutil.Process()
    return [me.pid, *(p.pid for p in me.children(recursive=True))]


def _snapshot() -> dict[int, dict[str, float]]:
    return {pid: _thread_cpu_s(pid) for pid in _tree_pids()}


def _window() -> Json:
    """Work and runtime CPU over ``WINDOW_S`` in this process's tree."""
    before, started = _snapshot(), time.monotonic()
    time.sleep(WINDOW_S)
    after, ended = _snapshot(), time.monotonic()
    work = runtime = 0.0
    workers = 0
    beside: dict[str, float] = {}  # the runtime's CPU by process/thread name
    for pid, threads in after.items():
        deltas = {task: cpu - before.get(pid, {}).get(task, 0.0) for task, cpu in threads.items()}
        busiest = max(deltas, key=deltas.__getitem__, default=None)
        if busiest is not None and deltas[busiest] > 0.5 * WINDOW_S:  # a worker's computing
            workers += 1  # thread: work
            work += deltas.pop(busiest)
        for task, cpu in deltas.items():
            runtime += cpu
            if cpu > 0:
                name = _named(task)
                beside[name] = beside.get(name, 0.0) + cpu
    if workers != NUM_CPUS:
        raise RuntimeError(f"{workers} processes computed through the window, expected 2")
    return {
        "window": (started, ended),
        "work_s": work,
        "runtime_s": runtime,
        "runtime_ms_per_s": 1000 * runtime / WINDOW_S,
        "work_share": work / (NUM_CPUS * WINDOW_S),
        "beside_ms_per_s": {
            name: round(1000 * cpu / WINDOW_S, 2)
            for name, cpu in sorted(beside.items(), key=lambda kv: -kv[1])[:12]
        },
    }


@contextmanager
def _in_background(run: Callable[[], object]) -> Iterator[None]:
    """``run`` on a thread while the block measures; joined after."""
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join(SPIN_S + 60)


def child_cmlray() -> Json:
    import cmlray

    cmlray.init(num_cpus=NUM_CPUS, console=common.quiet_console())
    try:
        code = SPIN_CODE.format(spin_s=SPIN_S)
        launched = cmlray.launch_workers(NUM_CPUS, cpu=1, memory=0.2, code=code)
        time.sleep(SETTLE_S)
        result = _window()
        done = cmlray.await_workers(launched, timeout_seconds=SPIN_S + 60)
        if done["failures"]:
            raise RuntimeError(f"cmlray workers failed: {done['failures']}")
    finally:
        cmlray.shutdown()
    return result


def child_cmlray_items() -> Json:
    """Two workers serving a queue of items like a sweep's; results in the window counted."""
    import tempfile

    import cmlray

    arrived: list[float] = []
    failed: list[str] = []
    cmlray.init(num_cpus=NUM_CPUS, console=common.quiet_console())
    try:
        with tempfile.TemporaryDirectory(prefix="runtime-floor-") as home:
            queue = cmlray.Queue("runtime-floor-items")
            queue.put_many(list(range(ITEMS)))
            queue.close()
            code = ITEM_CODE.format(item_s=ITEM_S, home=home, queue=queue.name)
            launched = cmlray.launch_workers(NUM_CPUS, cpu=1, memory=0.2, code=code)

            def collect() -> None:
                for result in queue.as_completed():
                    if not result.ok:
                        failed.append(str(result.error))
                    arrived.append(time.monotonic())

            with _in_background(collect):
                time.sleep(SETTLE_S)
                result = _window()
            cmlray.await_workers(launched, timeout_seconds=SPIN_S + 60)
    finally:
        cmlray.shutdown()
    if failed or len(arrived) != ITEMS:
        raise RuntimeError(f"{len(arrived)} results of {ITEMS} items, failed: {failed[:3]}")
    started, ended = result["window"]
    result["items_in_window"] = sum(1 for at in arrived if started <= at <= ended)
    return result


class Spinner:
    def spin(self, seconds: float) -> int:
        return spin(seconds)


def child_ray() -> Json:
    temp_dir = common.enable_token_auth()  # before Ray is imported: it caches its config
    import ray

    timings: Json = {}
    common.ray_init(temp_dir, NUM_CPUS)
    try:
        actor = ray.remote(num_cpus=1)(Spinner)
        spinners = [actor.remote() for _ in range(NUM_CPUS)]
        calls = [s.spin.remote(SPIN_S) for s in spinners]
        time.sleep(SETTLE_S)
        result = _window()
        ray.get(calls, timeout=SPIN_S + 60)
        for spinner in spinners:
            ray.kill(spinner)
    finally:
        common.ray_shutdown(timings, "shutdown_s", temp_dir)
    return result


def child_loky() -> Json:
    from joblib import Parallel, delayed

    def run() -> None:
        Parallel(n_jobs=NUM_CPUS)(delayed(spin)(SPIN_S) for _ in range(NUM_CPUS))

    with _in_background(run):
        time.sleep(SETTLE_S)
        result = _window()
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True)
    return result


def child_pool() -> Json:
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(NUM_CPUS) as pool:
        pending = pool.map_async(spin, [SPIN_S] * NUM_CPUS)
        time.sleep(SETTLE_S)
        result = _window()
        pending.get(SPIN_S + 60)
    return result


CHILDREN = {
    "cmlray": child_cmlray,
    "cmlray_items": child_cmlray_items,
    "ray": child_ray,
    "loky": child_loky,
    "pool": child_pool,
}


def child(side: str) -> Json:
    return {"side": side, **CHILDREN[side]()}


def said(result: Json) -> str:
    """A child's result in a progress line."""
    beside, share = result["runtime_ms_per_s"], 100 * result["work_share"]
    return f"{beside:.1f} ms of CPU a second beside the work, {share:.2f}% of the cores to it"


def summarize(children: Sequence[Json]) -> Json:
    keys = ("runtime_ms_per_s", "work_share")
    table = common.medians_by_side(children, SIDES, keys, runs_of="runtime_ms_per_s")
    items = [c for c in children if c["side"] == "cmlray_items"]
    per_s = statistics.median(c["items_in_window"] / WINDOW_S for c in items)
    extra_ms_per_s = table["cmlray_items"]["runtime_ms_per_s"] - table["cmlray"]["runtime_ms_per_s"]
    return {"table": table, "items_per_s": per_s, "runtime_ms_per_item": extra_ms_per_s / per_s}


def print_table(summary: Json) -> None:
    from rich.table import Table

    table = Table(title="Two workers computing: the CPU beside them (median of rounds)")
    for column in ("side", "CPU a second beside the work", "cores to the work", "runs"):
        table.add_column(column, justify="left" if column == "side" else "right")
    for side in SIDES:
        row = summary["table"][side]
        runs = ", ".join(f"{value:.1f}" for value in row["runs"])
        share = f"{100 * row['work_share']:.2f}%"
        table.add_row(LABELS[side], f"{row['runtime_ms_per_s']:.1f} ms", share, runs)
    common.table_console(120).print(table)
    print(
        f"each item (50 ms of compute, a 75 KB file sent home, a line, a result) adds"
        f" {summary['runtime_ms_per_item']:.2f} ms of the runtime's CPU"
        f" ({summary['items_per_s']:.1f} items a second)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    return common.sides_main(
        argv, __doc__,
        script=__file__, sides=SIDES, said=said, child=child,
        summarize=summarize, show=print_table,
        plan=lambda rounds: {"rounds": rounds, "window_s": WINDOW_S, "spin_s": SPIN_S},
        results_path=RESULTS_PATH,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
