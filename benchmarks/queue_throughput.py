"""Benchmark: cmlray's parameter queue against Ray's own queue, side by side in one run.

Every Ray session lives in a fresh child process of this script
(``python benchmarks/queue_throughput.py --child MODE``); each child prints one JSON
line for the parent. What is measured:

1. Throughput: N no-op items (20,000; 5,000 with ``--quick``) through 2
   workers of 0.5 CPU, worker start-up included.

   cmlray (``cmlray.init(num_cpus=2)``): fill = ``cmlray.Queue(...)``,
   ``put_many(range(N))``, ``close()``. Then, timed from the launch call:
   ``launch_workers(2, cpu=0.5, memory=0.1, code="import cmlray.worker;
   cmlray.worker.serve(name, lambda x: x)")``, ``q.join()``, ``q.results()``
   (checked: N results, all ok, every item back). Phases come from the
   worker dicts' ``running_at`` (program spawned). Then, untimed for the
   main result, a diagnostic run of N more items in the same session by
   programs that wrap the channel client to time each ``exchange`` and
   record its batch size, stamp their first and last item, and first time
   100 empty exchanges (the bare round trip program -> actor -> queue actor).

   Raw Ray (token auth as cmlray sets it up: ``RAY_AUTH_MODE=token``,
   ``RAY_AUTH_TOKEN_PATH`` naming a 0600 file with a random hex token in a
   private temp dir; ``ray.init(address="local", num_cpus=2,
   include_dashboard=False, log_to_driver=False)``): fill = a
   ``ray.util.queue.Queue`` (its actor at ``num_cpus=0`` like cmlray's) and
   ``put_nowait_batch(range(N))``. Then, timed from creating the actors:
   2 actors ``@ray.remote(num_cpus=0.5)`` each loop ``q.get(block=True,
   timeout=0.1)``, one item per call, apply the no-op and keep the result,
   until ``Empty``; each returns its results, which the session collects
   with ``ray.get`` (checked like cmlray's). Returning the results, rather
   than putting each on a second queue, is the faster of the two raw
   designs: one actor call per item instead of two. The final ``Empty``
   costs each actor its 0.1 s timeout.

   Reported: items/s = N / (launch -> all results), and cmlray / raw
   (the project's goal: >= 40x); fill time apart.

2. What DESIGN 8 saves (worker programs don't join Ray). In the cmlray
   child's session, after the runs above, one-worker launches (cpu 0.5,
   memory 1 GiB), the two kinds taking turns, of (i) a program that imports
   ``cmlray.worker`` and serves a cmlray queue of 1 item, and (ii) a program
   that does ``import ray; ray.init(address=<the session's GCS address>)``
   and gets 1 item from a named ``ray.util.queue.Queue`` actor: the
   alternative design. Each program prints ``time.time()`` when its code
   starts and when it has its item, and its peak RSS (``VmHWM`` of
   ``/proc/self/status``) at the end. Reported: spawn -> first item (spawn
   = the worker dict's ``running_at``), interpreter start (spawn -> code),
   code -> first item, first item -> exit (``finished_at``), peak RSS; the
   medians and (ii) - (i).

The sides take turns going first, round after round (the machine is shared
and noisy): results are medians, ratios of medians and ratios paired by
round. A Rich table is printed and everything, raw samples included, is
written to ``benchmarks/results/queue.json``. Every child shuts its session
down; every process of the run inherits a mark (``CMLRAY_BENCH_RUN`` in its
environment): after each child the parent waits until none is left, and at
the end it checks with psutil that none is alive (Ray's ``raylet``,
``gcs_server``, ``ray::`` named), killing any by pid; never ``ray stop``.

Usage: ``python benchmarks/queue_throughput.py [--rounds N] [--quick]`` (default 3
rounds; ``--quick``: 1 round of 5,000 items).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

# and would shadow the standard library's ``queue`` (which Ray imports), in
# this process and in Ray's workers (they inherit the driver's sys.path). So
# first _common, from this directory (it imports no queue), which then takes
# the directory off sys.path.
import _common as common
from _common import SIDES, Json

NUM_CPUS = 2
N_WORKERS = 2
WORKER_CPU = 0.5
WORKER_MEMORY_GIB = 0.1
PROGRAM_MEMORY_GIB = 1.0  # a program that joins Ray needs more than 0.1 GiB
ITEMS = 20_000
QUICK_ITEMS = 5_000
RAW_GET_TIMEOUT_S = 0.1
EMPTY_EXCHANGES = 100
RATIO_GOAL = 60.0  # the warm fan-out issue: >= 60x ray.util.queue, one get per item
NAMESPACE = "cmlray-bench"
STAMP_PREFIX = "BENCH_STAMP "
RESULTS_PATH = common.RESULTS_DIR / "queue.json"

# --------------------------------------------------------------------------
# Worker programs (Python source run by cmlray workers).
# --------------------------------------------------------------------------

SERVE_CODE = "import cmlray.worker; cmlray.worker.serve({name!r}, lambda x: x)"

_PEAK_RSS = """
def _memory_mb():
    out = {{}}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0]) / 1024
    return out
"""

# (i) DESIGN 8: the program reaches the queue through its actor.
WORKER_PROGRAM = (
    "import time\n_t_code = time.time()\nimport json\nimport cmlray.worker\n"
    + _PEAK_RSS
    + """
_got = []
def _fn(item):
    _got.append((time.time(), item))
    return item
cmlray.worker.serve({name!r}, _fn)
print({prefix!r} + json.dumps(dict(code=_t_code, first=_got[0][0], item=_got[0][1],
                                  **_memory_mb())))
"""
)

# (ii) The alternative: the program joins Ray as a driver.
RAY_PROGRAM = (
    "import time\n_t_code = time.time()\nimport json, logging\nimport ray\n"
    + _PEAK_RSS
    + """
ray.init(address={address!r}, namespace={namespace!r}, log_to_driver=False,
         logging_level=logging.WARNING)
_item = ray.get(ray.get_actor({name!r}).get.remote(30))
_first = time.time()
print({prefix!r} + json.dumps(dict(code=_t_code, first=_first, item=_item, **_memory_mb())))
"""
)

# The diagnostic run: where a cmlray worker's time goes.
HOT_PROGRAM = """
import json, time
import cmlray.worker
_client = cmlray.worker.client()
_exchanges = []
_request = _client.request
def _timed(*message):
    started = time.perf_counter()
    reply = _request(*message)
    if message[0] == "exchange":
        _exchanges.append((message[3], len(reply[0]), time.perf_counter() - started))
    return reply
_client.request = _timed
_first = _last = None
_count = 0
for _task in cmlray.worker.tasks({name!r}):
    with _task:
        if _first is None:
            _first = time.time()
        _task.result = _task.item
    _last = time.time()
    _count += 1
_client.request = _request
_start = time.perf_counter()
for _ in range({empty}):
    _client.request("exchange", {name!r}, [], 0, 0.0)
_empty_s = (time.perf_counter() - _start) / {empty}
print({prefix!r} + json.dumps(dict(empty_exchange_s=_empty_s, first=_first, last=_last,
                                  count=_count, exchanges=_exchanges)))
"""


# --------------------------------------------------------------------------
# Children: each runs in a fresh interpreter and prints one JSON result line.
# --------------------------------------------------------------------------


def _stamp(worker: Json) -> Json:
    """The JSON a benchmark program printed last (from the worker's tail)."""
    for line in reversed(worker["tail"]):
        if line.startswith(STAMP_PREFIX):
            stamp: Json = json.loads(line[len(STAMP_PREFIX) :])
            return stamp
    raise RuntimeError(f"worker {worker['name']} printed no stamp: {worker['tail'][-5:]}")


def _open_cmlray(timings: Json) -> None:
    """Start a cmlray session whose workers' lines go to a console in memory."""
    import cmlray

    with common.timer(timings, "init_s"):
        cmlray.init(num_cpus=NUM_CPUS, console=common.quiet_console())


def _check_results(values: Sequence[Any], oks: Sequence[bool], n: int) -> None:
    if len(values) != n or not all(oks) or sorted(values) != list(range(n)):
        failed = sum(1 for ok in oks if not ok)
        raise RuntimeError(f"wrong results: {len(values)} of {n}, {failed} failed")


def _phases(t0: float, t_end: float, started: Sequence[float]) -> Json:
    """Where one run's time went, from the workers' wall-clock start stamps."""
    return {
        "to_first_running_s": min(started) - t0,
        "to_last_running_s": max(started) - t0,
        "first_running_to_done_s": t_end - min(started),
    }


def _await_all(workers: list[Json]) -> list[Json]:
    import cmlray

    outcome = cmlray.await_workers(workers, timeout_seconds=120)
    if outcome["failures"]:
        raise RuntimeError(f"workers failed: {outcome['failures']}")
    done: list[Json] = outcome["workers"]
    return done


def _cmlray_fill(name: str, n: int, result: Json) -> Any:
    import cmlray

    with common.timer(result, "fill_s"):
        queue = cmlray.Queue(name)
        queue.put_many(range(n))
        queue.close()
    return queue


def _cmlray_timed_run(n: int) -> Json:
    """The specified run: launch, join, collect results (worker start-up included)."""
    import cmlray

    result: Json = {}
    queue = _cmlray_fill("bench", n, result)
    t0_wall, t0 = time.time(), time.perf_counter()
    workers = cmlray.launch_workers(
        N_WORKERS, cpu=WORKER_CPU, memory=WORKER_MEMORY_GIB, code=SERVE_CODE.format(name="bench")
    )
    result["launch_call_s"] = time.perf_counter() - t0
    queue.join()
    joined = time.perf_counter()
    outcomes = queue.results()
    t_end, t_end_wall = time.perf_counter(), time.time()
    _check_results([r.result for r in outcomes], [r.ok for r in outcomes], n)
    done = _await_all(workers)
    started = [common.iso_to_unix(w["running_at"]) for w in done]
    result.update(elapsed_s=t_end - t0, join_s=joined - t0, results_s=t_end - joined)
    result["phases"] = _phases(t0_wall, t_end_wall, started)
    return result


def _serving_exchanges(stamp: Json) -> list[tuple[int, int, float]]:
    """A worker's exchanges between its first and last item.

    Those after its first (which fetched the first item) that brought items:
    the last one only reports and waits for the queue to drain.
    """
    return [(want, got, secs) for want, got, secs in stamp["exchanges"][1:] if got > 0]


def _hot_summary(stamps: list[Json], started: list[float], t0: float, joined: float) -> Json:
    busy = [s for s in stamps if s["first"] is not None]  # a late worker may get no item
    first, last = min(s["first"] for s in busy), max(s["last"] for s in busy)
    serving = [e for s in busy for e in _serving_exchanges(s)]
    busy_s = sum(s["last"] - s["first"] for s in busy)
    return {
        "empty_exchange_s": statistics.median(s["empty_exchange_s"] for s in stamps),
        "to_first_running_s": min(started) - t0,
        "running_to_first_item_s": first - min(started),
        "first_to_last_item_s": last - first,
        "last_item_to_join_s": joined - last,
        "items_per_worker": [s["count"] for s in stamps],
        "exchanges": [s["exchanges"] for s in stamps],
        "batch_sizes": [got for _, got, _ in serving],
        "exchange_median_s": common.median_or_none([secs for _, _, secs in serving]),
        "exchange_share": sum(secs for _, _, secs in serving) / busy_s if busy_s else None,
    }


def _cmlray_hot_run(n: int) -> Json:
    """Diagnostic run: per-exchange times and batch sizes, from inside the programs."""
    import cmlray

    result: Json = {}
    queue = _cmlray_fill("hot", n, result)
    code = HOT_PROGRAM.format(name="hot", empty=EMPTY_EXCHANGES, prefix=STAMP_PREFIX)
    t0 = time.time()
    workers = cmlray.launch_workers(N_WORKERS, cpu=WORKER_CPU, memory=WORKER_MEMORY_GIB, code=code)
    queue.join()
    joined = time.time()
    outcomes = queue.results()
    _check_results([r.result for r in outcomes], [r.ok for r in outcomes], n)
    done = _await_all(workers)
    started = [common.iso_to_unix(w["running_at"]) for w in done]
    result.update(_hot_summary([_stamp(w) for w in done], started, t0, joined))
    return result


def child_cmlray(n: int, samples: int, first: str) -> Json:
    """Throughput, the diagnostic run, then DESIGN 8's program samples (one session)."""
    import cmlray

    result: Json = {}
    _open_cmlray(result)
    try:
        result["run"] = _cmlray_timed_run(n)
        result["hot"] = _cmlray_hot_run(n)
        result["programs"] = _program_samples(samples, first)
    finally:
        with common.timer(result, "shutdown_s"):
            cmlray.shutdown()
    return result


def noop(item: Any) -> Any:
    return item


class RawWorker:
    """The raw-Ray worker: drains a ``ray.util.queue.Queue`` one item per call."""

    def drain(self, queue: Any) -> Json:
        from ray.util.queue import Empty

        entered = time.time()
        results = []
        while True:
            try:
                item = queue.get(block=True, timeout=RAW_GET_TIMEOUT_S)
            except Empty:
                break
            results.append(noop(item))
        return {"entered": entered, "exited": time.time(), "results": results}


def _ray_run(n: int) -> Json:
    import ray
    from ray.util.queue import Queue

    result: Json = {}
    with common.timer(result, "fill_s"):
        queue = Queue(actor_options={"num_cpus": 0})
        queue.put_nowait_batch(list(range(n)))
    worker_class = ray.remote(num_cpus=WORKER_CPU)(RawWorker)
    t0_wall, t0 = time.time(), time.perf_counter()
    actors = [worker_class.remote() for _ in range(N_WORKERS)]
    outputs = ray.get([actor.drain.remote(queue) for actor in actors])
    t_end, t_end_wall = time.perf_counter(), time.time()
    values = [v for o in outputs for v in o["results"]]
    _check_results(values, [True] * len(values), n)
    result["elapsed_s"] = t_end - t0
    result["items_per_worker"] = [len(o["results"]) for o in outputs]
    result["phases"] = _phases(t0_wall, t_end_wall, [o["entered"] for o in outputs])
    return result


def child_ray(n: int) -> Json:
    result: Json = {}
    temp_dir = common.enable_token_auth()  # before Ray is imported: it caches its config
    import ray  # noqa: F401  (untimed: init_s times ray.init alone)

    try:
        with common.timer(result, "init_s"):
            common.ray_init(temp_dir, NUM_CPUS)
        result["run"] = _ray_run(n)
    finally:
        common.ray_shutdown(result, "shutdown_s", temp_dir)
    return result


PROGRAM_KINDS = ("worker", "ray-driver")


def _one_item_queue(kind: str, name: str, item: int) -> tuple[Any, str]:
    """A queue of one item for a ``kind`` program, and that program's code."""
    if kind == "worker":
        import cmlray

        queue = cmlray.Queue(name)
        queue.put(item)
        queue.close()
        return queue, WORKER_PROGRAM.format(name=name, prefix=STAMP_PREFIX)
    import ray
    from ray.util.queue import Queue

    queue = Queue(actor_options={"name": name, "namespace": NAMESPACE, "num_cpus": 0})
    queue.put(item)
    address = ray.get_runtime_context().gcs_address
    code = RAY_PROGRAM.format(address=address, namespace=NAMESPACE, name=name, prefix=STAMP_PREFIX)
    return queue, code


def _program_sample(kind: str, index: int) -> Json:
    """Launch one ``kind`` program that takes one item; its own timings and memory."""
    import cmlray

    queue, code = _one_item_queue(kind, f"one-{kind}-{index}", index)
    workers = cmlray.launch_workers(1, cpu=WORKER_CPU, memory=PROGRAM_MEMORY_GIB, code=code)
    (worker,) = _await_all(workers)
    if kind == "ray-driver":
        queue.shutdown()
    stamp = _stamp(worker)
    if stamp["item"] != index:
        raise RuntimeError(f"{kind} program got item {stamp['item']!r}, not {index}")
    spawned, finished = (
        common.iso_to_unix(worker["running_at"]),
        common.iso_to_unix(worker["finished_at"]),
    )
    return {
        "to_first_item_s": stamp["first"] - spawned,
        "interpreter_s": stamp["code"] - spawned,
        "code_to_first_item_s": stamp["first"] - stamp["code"],
        "first_item_to_exit_s": finished - stamp["first"],
        "peak_rss_mb": stamp["VmHWM"],
        "rss_mb": stamp["VmRSS"],
    }


def _program_samples(samples: int, first: str) -> Json:
    """``samples`` programs of each kind, taking turns (``first`` goes first)."""
    result: Json = {kind: [] for kind in PROGRAM_KINDS}
    order = PROGRAM_KINDS if first == PROGRAM_KINDS[0] else PROGRAM_KINDS[::-1]
    for index in range(samples):
        for kind in order if index % 2 == 0 else order[::-1]:
            result[kind].append(_program_sample(kind, index))
    return result


# --------------------------------------------------------------------------
# Parent: schedules children, alternating sides, and reports.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How much to measure."""

    rounds: int
    items: int
    program_samples: int  # of each program kind, per cmlray child


def make_plan(rounds: int | None, quick: bool) -> Plan:
    return Plan(
        rounds=rounds or (1 if quick else 3),
        items=QUICK_ITEMS if quick else ITEMS,
        program_samples=2,
    )


def _brief(result: Json) -> str:
    run = result.get("run", {})
    parts = [f"init {result['init_s']:.1f} s"]
    if run:
        parts.append(f"fill {run['fill_s']:.2f} s, launch -> results {run['elapsed_s']:.2f} s")
    for kind, samples in result.get("programs", {}).items():
        firsts = ", ".join(f"{s['to_first_item_s']:.2f}" for s in samples)
        parts.append(f"{kind} program to first item {firsts} s")
    return "; ".join(parts)


def measure(plan: Plan, results: dict[str, list[Json]]) -> None:
    """Run every child, sides alternating; fills ``results`` as they finish."""
    for index in range(plan.rounds):
        first_program = common.alternating(index, PROGRAM_KINDS)[0]
        extra = {
            "cmlray": ("--samples", str(plan.program_samples), "--first", first_program),
            "ray": (),
        }
        for side in common.alternating(index, SIDES):
            results[side].append(
                common.spawn_child(__file__, side, "--items", str(plan.items), *extra[side])
            )
            common.progress(f"round {index + 1}/{plan.rounds} {side}: {_brief(results[side][-1])}")


def _paired(cml: Sequence[float], raw: Sequence[float]) -> float | None:
    """Median over rounds of cmlray / raw, each round's two children side by side."""
    return common.median_or_none([a / b for a, b in zip(cml, raw, strict=False) if b])


def _throughput_rows(results: dict[str, list[Json]], n: int) -> list[Json]:
    """Per measure: per-side values by round (cmlray, raw Ray), for the table."""

    def by_round(side: str, get: Callable[[Json], float | None]) -> list[float]:
        return [v for c in results[side] if (v := get(c["run"])) is not None]

    def rate(run: Json) -> float:
        return float(n / run["elapsed_s"])

    def rate_after_running(run: Json) -> float:
        return float(n / run["phases"]["first_running_to_done_s"])

    def phase(key: str) -> Callable[[Json], float]:
        return lambda run: float(run["phases"][key])

    measures: list[tuple[str, str, Callable[[Json], float | None]]] = [
        ("items_per_s", f"items/s, launch -> all {n:,} results", rate),
        ("items_per_s_after_running", "items/s, first worker running -> all", rate_after_running),
        ("fill_s", f"queue fill ({n:,} items)", lambda r: r["fill_s"]),
        ("elapsed_s", "launch -> all results", lambda r: r["elapsed_s"]),
        ("to_first_running_s", "  launch -> first worker running", phase("to_first_running_s")),
        ("to_last_running_s", "  launch -> last worker running", phase("to_last_running_s")),
        ("first_running_to_done_s", "  first running -> all results",
         phase("first_running_to_done_s")),
        ("results_s", "  of which q.results() (cmlray)", lambda r: r.get("results_s")),
    ]  # fmt: skip
    rows = []
    for key, label, get in measures:
        cml, raw = by_round("cmlray", get), by_round("ray", get)
        rows.append({"key": key, "label": label, "cmlray": cml, "ray": raw})
    return rows


def _summarize_rows(rows: list[Json]) -> list[Json]:
    out = []
    for row in rows:
        cml, raw = common.median_or_none(row["cmlray"]), common.median_or_none(row["ray"])
        ratio = cml / raw if cml is not None and raw else None
        out.append(row | {"median_cmlray": cml, "median_ray": raw, "ratio": ratio,
                          "paired_ratio": _paired(row["cmlray"], row["ray"])})  # fmt: skip
    return out


def _hot_summary_of(results: dict[str, list[Json]]) -> Json:
    hots = [c["hot"] for c in results["cmlray"]]
    keys = ("empty_exchange_s", "exchange_median_s", "exchange_share", "to_first_running_s",
            "running_to_first_item_s", "first_to_last_item_s", "last_item_to_join_s")  # fmt: skip
    summary: Json = {
        key: common.median_or_none([h[key] for h in hots if h[key] is not None]) for key in keys
    }
    summary["serving_exchanges"] = common.median_or_none([len(h["batch_sizes"]) for h in hots])
    sizes = [size for h in hots for size in h["batch_sizes"]]
    summary["batch_size_median"] = common.median_or_none(sizes)
    summary["batch_size_max"] = max(sizes, default=None)
    return summary


def _program_summary(results: dict[str, list[Json]]) -> Json:
    samples = {k: [s for c in results["cmlray"] for s in c["programs"][k]] for k in PROGRAM_KINDS}
    keys = ("to_first_item_s", "interpreter_s", "code_to_first_item_s",
            "first_item_to_exit_s", "peak_rss_mb")  # fmt: skip
    summary: Json = {"samples_per_kind": len(samples["worker"])}
    for key in keys:
        medians = {k: common.median_or_none([s[key] for s in samples[k]]) for k in PROGRAM_KINDS}
        worker, driver = medians["worker"], medians["ray-driver"]
        diff = driver - worker if worker is not None and driver is not None else None
        summary[key] = medians | {"difference": diff}
    return summary


def summarize(results: dict[str, list[Json]], n: int) -> Json:
    return {
        "items": n,
        "throughput": _summarize_rows(_throughput_rows(results, n)),
        "cmlray_diagnostic": _hot_summary_of(results),
        "programs": _program_summary(results),
        "goal_ratio": RATIO_GOAL,
    }


# --------------------------------------------------------------------------
# The table.
# --------------------------------------------------------------------------


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "items/s":
        return f"{value:,.0f}/s"
    if unit == "ms":
        return f"{value * 1000:.1f} ms"
    if unit == "MB":
        return f"{value:.0f} MB"
    return f"{value:.3f} s"


def _ratio_text(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}x"


def _throughput_table(summary: Json, rounds: int) -> Any:
    from rich.table import Table

    table = Table(title=f"Throughput: {summary['items']:,} no-op items, {N_WORKERS} workers x"
                  f" {WORKER_CPU} CPU, {NUM_CPUS} CPUs (medians of {rounds} rounds)")  # fmt: skip
    for column in ("measure", "cmlray", "raw Ray", "cmlray / raw", "paired by round", "goal"):
        table.add_column(column, justify="left" if column in ("measure", "goal") else "right")
    for row in summary["throughput"]:
        unit = "items/s" if row["key"].startswith("items_per_s") else "s"
        goal = ""
        if row["key"] == "items_per_s" and row["ratio"] is not None:
            met = row["ratio"] >= RATIO_GOAL
            goal = f">= {RATIO_GOAL:g}x " + common.verdict(met)
        table.add_row(row["label"], _fmt(row["median_cmlray"], unit),
                      _fmt(row["median_ray"], unit), _ratio_text(row["ratio"]),
                      _ratio_text(row["paired_ratio"]), goal)  # fmt: skip
    return table


def _diagnostic_table(summary: Json) -> Any:
    from rich.table import Table

    diag = summary["cmlray_diagnostic"]
    table = Table(title="Where a cmlray run's time goes (diagnostic run, same session, medians)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("launch -> first worker running", _fmt(diag["to_first_running_s"], "s")),
        ("first running -> first item (program start, import, 1st exchange)",
         _fmt(diag["running_to_first_item_s"], "s")),
        ("first item -> last item", _fmt(diag["first_to_last_item_s"], "s")),
        ("  = items/s once running",
         _fmt(summary["items"] / diag["first_to_last_item_s"], "items/s")
         if diag["first_to_last_item_s"] else "-"),
        ("last item -> join returned", _fmt(diag["last_item_to_join_s"], "s")),
        ("empty exchange round trip (program -> actor -> queue actor)",
         _fmt(diag["empty_exchange_s"], "ms")),
        ("exchanges that brought items, after each worker's first",
         f"{diag['serving_exchanges']:.0f}"),
        ("  their batch size: median / max",
         f"{diag['batch_size_median']:.0f} / {diag['batch_size_max']}"),
        ("  their round trip, median", _fmt(diag["exchange_median_s"], "ms")),
        ("  share of the workers' first -> last item time",
         "-" if diag["exchange_share"] is None else f"{diag['exchange_share']:.0%}"),
    ]  # fmt: skip
    for label, value in rows:
        table.add_row(label, value)
    return table


def _program_table(summary: Json) -> Any:
    from rich.table import Table

    programs = summary["programs"]
    table = Table(title=f"DESIGN 8: worker program start-up (medians of"
                  f" {programs['samples_per_kind']} each)")  # fmt: skip
    for column in ("measure", "(i) cmlray.worker", "(ii) ray.init", "(ii) - (i)"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    labels = {
        "to_first_item_s": "program spawned -> first item",
        "interpreter_s": "  spawned -> its code starts",
        "code_to_first_item_s": "  code starts -> first item",
        "first_item_to_exit_s": "first item -> program exited",
        "peak_rss_mb": "peak RSS (VmHWM)",
    }
    for key, label in labels.items():
        unit = "MB" if key.endswith("_mb") else "s"
        row = programs[key]
        table.add_row(label, _fmt(row["worker"], unit), _fmt(row["ray-driver"], unit),
                      _fmt(row["difference"], unit))  # fmt: skip
    return table


def print_tables(summary: Json, rounds: int) -> None:
    console = common.table_console(130)
    console.print(_throughput_table(summary, rounds))
    console.print(_diagnostic_table(summary))
    console.print(_program_table(summary))


# --------------------------------------------------------------------------


def code_state() -> Json:
    """Which cmlray was measured: the commit and the files changed since (shared tree)."""

    def git(*args: str) -> str:
        run = subprocess.run(
            ["git", *args], cwd=common.REPO, capture_output=True, text=True, check=False
        )
        return run.stdout.strip()

    return {
        "commit": git("rev-parse", "HEAD"),
        "changed": git("status", "--porcelain", "--", "cmlray").splitlines(),
    }


def run(args: argparse.Namespace) -> int:
    """The parent: every child, sides alternating, then the tables and the JSON."""
    plan = make_plan(args.rounds, args.quick)
    code = code_state()  # before: others may edit the shared tree meanwhile
    results: dict[str, list[Json]] = {"cmlray": [], "ray": []}

    def report() -> Json:
        summary = summarize(results, plan.items)
        print_tables(summary, plan.rounds)
        return summary

    return common.run_parent(
        lambda: measure(plan, results),
        report,
        plan=asdict(plan),
        children=results,
        results_path=RESULTS_PATH,
        extra={"code": code},
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3)")
    parser.add_argument("--quick", action="store_true", help=f"1 round of {QUICK_ITEMS:,} items")
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--items", type=int, default=ITEMS, help=argparse.SUPPRESS)
    parser.add_argument("--samples", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--first", choices=PROGRAM_KINDS, default="worker", help=argparse.SUPPRESS)
    return common.checked_args(parser, argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    modes: dict[str, Callable[[], Json]] = {  # what a child (--child MODE) runs
        "cmlray": lambda: child_cmlray(args.items, args.samples, args.first),
        "ray": lambda: child_ray(args.items),
    }
    return common.child_or_parent(args.child, modes, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
