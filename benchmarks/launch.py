"""Benchmark: cmlray against raw Ray doing the same work, side by side in one run.

Every Ray session lives in a fresh child process of this script
(``python benchmarks/launch.py --child MODE``): Ray cannot be re-initialised
cleanly many times in one process. Each child prints one JSON line for the
parent. What is measured:

1. Session start and end. cmlray: ``import cmlray``, then ``import ray``
   (cmlray imports Ray lazily; timing it apart keeps it out of init), both
   counted as import time; then ``cmlray.init(num_cpus=2)``; then
   ``cmlray.shutdown()``. Raw Ray: token authentication turned on exactly
   as cmlray does it (``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN_PATH`` naming
   a 0600 file with a random hex token in a private temp dir, also Ray's
   ``_temp_dir``, set before Ray is imported), ``import ray``, then
   ``ray.init(address="local", num_cpus=2, include_dashboard=False,
   log_to_driver=False, logging_level=WARNING)`` (cmlray's own call), then
   ``ray.shutdown()``. The ``start-*`` children only do this; the launch
   children below time their import and init the same way, so import and
   init medians pool both kinds of children (all fresh processes doing the
   same thing), while shutdown is reported for an idle session (``start-*``)
   and after launches (``launch-*``) apart.
2. Launch to done of 8 workers of 0.25 CPU each printing one line.
   cmlray: ``launch_workers(8, cpu=0.25, memory=0.1, code="print('hello')")``
   then ``await_workers`` (all must succeed with the right output). Raw Ray:
   8 actors ``@ray.remote(num_cpus=0.25)`` whose method runs the same program
   with ``subprocess.run`` and returns its output; timed until all 8 outputs
   are in, then each is ``ray.kill``-ed. Each launch child times the *first
   wave* right after init (goal <= 0.5x raw Ray), then 9 *later waves* in the
   same session launched back to back (each right after the last one's
   ``await_workers`` returned: what a user waits for, goal <= 0.3x) and 9
   more after a pause (an untimed wait until all the head's CPUs are free
   again; goal <= 0.3x), each figure reported apart. Phases come from per-worker wall-clock stamps:
   for cmlray the worker dicts' ``running_at`` (its program spawned) and
   ``finished_at``; for raw Ray the actor method's entry and the subprocess's
   end.
   Soak: 300 workers in waves of 10 in one session, one child per side
   (goal: cmlray <= 60 s); raw Ray kills each actor as its program is done.
3. await latency (cmlray only, in the cmlray launch children): one worker
   runs ``import time; time.sleep(1)``; the gap between its ``finished_at``
   (ISO-8601 UTC, ms) and the moment ``await_workers`` returned (goal: p50
   <= 100 ms).

The two sides take turns going first, round after round, to cancel drift
(the machine is shared and noisy); results are medians and ratios cmlray /
raw Ray (goals: session start <= 1.0x, first wave <= 0.5x, later waves <= 0.3x). A table is printed
with Rich and everything, raw samples included, is written to
``benchmarks/results/launch.json``. Every child shuts its session down.
Every process of the run inherits a mark (``CMLRAY_BENCH_RUN`` in its
environment): after each child the parent waits until none is left, and at
the end any left over is reported (Ray's own ``raylet``, ``gcs_server``,
``ray::`` by name) and killed by pid; never ``ray stop``, which would end
every Ray on the machine.

Usage: ``python benchmarks/launch.py [--rounds N] [--quick]``: N launch
children per side (default 3, each a first and 9 later waves; 2 start-only children
per side; a 300-worker soak per side); ``--quick`` for a smoke run (1 of each,
3 later waves, a 60-worker soak).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import _common as common
from _common import SIDES, Json

NUM_CPUS = 2
N_WORKERS = 8
WORKER_CPU = 0.25
WORKER_MEMORY_GIB = 0.1
HELLO_CODE = "print('hello')"
SLEEP_CODE = "import time; time.sleep(1)"
AWAIT_GOAL_S = 0.100
START_GOAL = 1.0
FIRST_WAVE_GOAL = 0.5
LATER_WAVE_GOAL = 0.3
SOAK_GOAL_S = 60.0
SOAK_WORKERS = 300
SOAK_WAVE = 10
LATER_WAVES = 9
AWAIT_SAMPLES = 10
IDLE_TIMEOUT_S = 30.0
FOOTPRINT_SETTLE_S = 2.0
RESULTS_PATH = common.RESULTS_DIR / "launch.json"


# --------------------------------------------------------------------------
# Children: each runs in a fresh interpreter and prints one JSON result line.
# --------------------------------------------------------------------------


def _open_cmlray(timings: Json, quiet: bool = False) -> None:
    """Import cmlray (and Ray, which it imports lazily) and start a session, timed.

    ``quiet``: workers' lines go to a console in memory instead of stdout.
    """
    with common.timer(timings, "import_cmlray_s"):
        import cmlray
    with common.timer(timings, "import_ray_s"):
        import ray  # noqa: F401  (cmlray.init would import it: keep it out of init_s)
    timings["import_s"] = timings["import_cmlray_s"] + timings["import_ray_s"]
    console = common.quiet_console() if quiet else None
    with common.timer(timings, "init_s"):
        cmlray.init(num_cpus=NUM_CPUS, console=console)


def _open_ray(timings: Json) -> str:
    """Turn token auth on, import Ray and start a head, timed; returns its temp dir."""
    temp_dir = common.enable_token_auth()  # before Ray is imported: it caches its config
    with common.timer(timings, "import_s"):
        import ray  # noqa: F401
    with common.timer(timings, "init_s"):
        common.ray_init(temp_dir, NUM_CPUS)
    return temp_dir


def _footprint(into: Json) -> None:
    """The session's own head: how many processes this process started, and their memory."""
    import psutil

    time.sleep(FOOTPRINT_SETTLE_S)  # Ray starts some of its processes just after init returns
    tree = psutil.Process().children(recursive=True)
    rss = 0
    for proc in tree:
        with contextlib.suppress(psutil.Error):
            rss += proc.memory_info().rss
    into["head_processes"] = len(tree)
    into["head_rss_mib"] = rss / 2**20


def child_start_cmlray() -> Json:
    result: Json = {}
    _open_cmlray(result)
    import cmlray  # already imported (and timed) by _open_cmlray

    _footprint(result)

    with common.timer(result, "shutdown_s"):
        cmlray.shutdown()
    return result


def child_start_ray() -> Json:
    result: Json = {}
    temp_dir = _open_ray(result)
    _footprint(result)
    common.ray_shutdown(result, "shutdown_s", temp_dir)
    return result


def _wait_idle() -> None:
    common.wait_idle(NUM_CPUS, IDLE_TIMEOUT_S)


def _phases(t0: float, t_end: float, started: list[float], ended: list[float]) -> Json:
    """Where one launch's time went, from per-worker wall-clock stamps."""
    return {
        "to_first_running_s": min(started) - t0,
        "to_last_running_s": max(started) - t0,
        "program_median_s": statistics.median(e - s for s, e in zip(started, ended, strict=True)),
        "last_exit_to_done_s": t_end - max(ended),
    }


def _cmlray_launch_round() -> Json:
    import cmlray as cdsw

    t0_wall, t0 = time.time(), time.perf_counter()
    workers = cdsw.launch_workers(
        N_WORKERS, cpu=WORKER_CPU, memory=WORKER_MEMORY_GIB, code=HELLO_CODE
    )
    t_launched = time.perf_counter()
    outcome = cdsw.await_workers(workers)
    elapsed, t_end_wall = time.perf_counter() - t0, time.time()
    done = outcome["workers"]
    if outcome["failures"] or len(done) != N_WORKERS:
        raise RuntimeError(f"cmlray workers failed: {outcome['failures']}")
    if any(w["tail"] != ["hello"] for w in done):
        raise RuntimeError(f"unexpected worker output: {[w['tail'] for w in done]}")
    started = [common.iso_to_unix(w["running_at"]) for w in done]
    ended = [common.iso_to_unix(w["finished_at"]) for w in done]
    phases = _phases(t0_wall, t_end_wall, started, ended)
    phases["launch_call_s"] = t_launched - t0
    return {"elapsed_s": elapsed, "phases": phases}


def _await_sample() -> float:
    """Seconds between a worker's finished_at and await_workers returning."""
    import cmlray as cdsw

    workers = cdsw.launch_workers(1, cpu=WORKER_CPU, memory=WORKER_MEMORY_GIB, code=SLEEP_CODE)
    outcome = cdsw.await_workers(workers)
    returned = time.time()
    if outcome["failures"]:
        raise RuntimeError(f"await sample failed: {outcome['failures']}")
    return returned - common.iso_to_unix(outcome["workers"][0]["finished_at"])


def _waves(one_round: Callable[[], Json], later: int) -> list[Json]:
    """The first wave right after init; ``later`` waves back to back; ``later`` after a pause.

    Back to back is what a user who launches, awaits and launches again
    waits for: no pause between the waves (the last wave's resources are
    just being given back). After a pause (untimed, until every CPU of the
    head is free again) is the same wave on a quiet cluster.
    """
    rounds = [{**one_round(), "first": True, "kind": "first"}]
    for _ in range(later):
        rounds.append({**one_round(), "first": False, "kind": "back_to_back"})
    for _ in range(later):
        _wait_idle()
        rounds.append({**one_round(), "first": False, "kind": "after_pause"})
    return rounds


def child_launch_cmlray(timed: int, await_samples: int) -> Json:
    result: Json = {}
    _open_cmlray(result, quiet=True)
    import cmlray  # already imported (and timed) by _open_cmlray

    try:
        result["rounds"] = _waves(_cmlray_launch_round, timed)
        result["await_gaps_s"] = []
        for _ in range(await_samples):
            _wait_idle()
            result["await_gaps_s"].append(_await_sample())
    finally:
        with common.timer(result, "shutdown_after_use_s"):
            cmlray.shutdown()
    return result


class RawWorker:
    """The raw-Ray worker: an actor running the program as a subprocess."""

    def run(self, code: str) -> Json:
        entered = time.time()
        proc = subprocess.run(
            [sys.executable, "-u", "-c", code], capture_output=True, text=True, check=False
        )
        return {
            "entered": entered,
            "exited": time.time(),
            "returncode": proc.returncode,
            "stdout": proc.stdout,
        }


@functools.cache
def _raw_actor_class() -> Any:
    """``@ray.remote(num_cpus=0.25)`` on RawWorker, once per session (as cmlray does)."""
    import ray

    return ray.remote(num_cpus=WORKER_CPU)(RawWorker)


def _ray_launch_round() -> Json:
    import ray

    remote_class = _raw_actor_class()
    t0_wall, t0 = time.time(), time.perf_counter()
    actors = [remote_class.remote() for _ in range(N_WORKERS)]
    outputs = ray.get([actor.run.remote(HELLO_CODE) for actor in actors])
    elapsed, t_end_wall = time.perf_counter() - t0, time.time()
    for actor in actors:
        ray.kill(actor)
    if any(o["returncode"] != 0 or o["stdout"] != "hello\n" for o in outputs):
        raise RuntimeError(f"raw Ray workers failed: {outputs}")
    started = [o["entered"] for o in outputs]
    ended = [o["exited"] for o in outputs]
    return {"elapsed_s": elapsed, "phases": _phases(t0_wall, t_end_wall, started, ended)}


def child_launch_ray(timed: int) -> Json:
    result: Json = {}
    temp_dir = _open_ray(result)
    try:
        result["rounds"] = _waves(_ray_launch_round, timed)
    finally:
        common.ray_shutdown(result, "shutdown_after_use_s", temp_dir)
    return result


def _soak(one_wave: Callable[[], int], workers: int) -> Json:
    """``workers`` workers in waves of SOAK_WAVE in one session, timed as a whole."""
    t0 = time.perf_counter()
    done = sum(one_wave() for _ in range(workers // SOAK_WAVE))
    if done != workers:
        raise RuntimeError(f"soak: {done} of {workers} workers succeeded")
    return {"soak_s": time.perf_counter() - t0, "soak_workers": workers}


def child_soak_cmlray(workers: int) -> Json:
    result: Json = {}
    _open_cmlray(result, quiet=True)
    import cmlray as cdsw

    def wave() -> int:
        launched = cdsw.launch_workers(
            SOAK_WAVE, cpu=WORKER_CPU, memory=WORKER_MEMORY_GIB, code=HELLO_CODE
        )
        return len(cdsw.await_workers(launched, timeout_seconds=300)["workers"])

    try:
        result.update(_soak(wave, workers))
    finally:
        cdsw.shutdown()
    return result


def child_soak_ray(workers: int) -> Json:
    result: Json = {}
    temp_dir = _open_ray(result)
    import ray

    def wave() -> int:
        # Each actor is killed as soon as its program is done, freeing its CPU
        # as cmlray frees a finished worker's (a wave can hold more than fits).
        actors = [_raw_actor_class().remote() for _ in range(SOAK_WAVE)]
        pending = {actor.run.remote(HELLO_CODE): actor for actor in actors}
        ok = 0
        while pending:
            (ref,), _ = ray.wait(list(pending))
            output = ray.get(ref)
            ray.kill(pending.pop(ref))
            ok += output["returncode"] == 0 and output["stdout"] == "hello\n"
        return ok

    try:
        result.update(_soak(wave, workers))
    finally:
        common.ray_shutdown(result, "shutdown_after_use_s", temp_dir)
    return result


# --------------------------------------------------------------------------
# Parent: the plan, the children (sides alternating), the summary and its table.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How much to measure: children per side and what each child does."""

    start_trials: int
    launch_rounds: int
    launches_per_child: int  # waves after the first, in each launch child
    await_samples: int
    soak_workers: int

    def awaits_of_child(self, index: int) -> int:
        """await samples the ``index``-th cmlray launch child takes (>= 1)."""
        share, extra = divmod(self.await_samples, self.launch_rounds)
        return max(1, share + (1 if index < extra else 0))


def make_plan(rounds: int | None, quick: bool) -> Plan:
    launch_rounds = rounds or (1 if quick else 3)
    return Plan(
        start_trials=1 if quick else 2,
        launch_rounds=launch_rounds,
        launches_per_child=3 if quick else LATER_WAVES,
        await_samples=3 if quick else AWAIT_SAMPLES,
        soak_workers=60 if quick else SOAK_WORKERS,
    )


def _spawn(mode: str, *extra: str) -> Json:
    """Run ``--child mode``; its result, with the wait for its processes as ``settle_s``."""
    return common.spawn_child(__file__, mode, *extra, record_settle=True)


def _brief(result: Json) -> str:
    keys = ("import_s", "init_s", "shutdown_s", "shutdown_after_use_s")
    parts = [f"{k.removesuffix('_s')} {result[k]:.2f}" for k in keys if k in result]
    parts += [f"launch {r['elapsed_s']:.2f}" for r in result.get("rounds", [])]
    return ", ".join(parts)


def new_results() -> dict[str, dict[str, list[Json]]]:
    """Every child's result: ``{"start" | "launch": {side: [result, ...]}}``."""
    return {kind: {side: [] for side in SIDES} for kind in ("start", "launch", "soak")}


def measure(plan: Plan, results: dict[str, dict[str, list[Json]]]) -> None:
    """Run every child, sides alternating; fills ``results`` as they finish."""
    launch_args = ["--timed", str(plan.launches_per_child)]
    for index in range(plan.start_trials):
        for side in common.alternating(index, SIDES):
            results["start"][side].append(_spawn(f"start-{side}"))
            brief = _brief(results["start"][side][-1])
            common.progress(f"start trial {index + 1}/{plan.start_trials} {side}: {brief}")
    for index in range(plan.launch_rounds):
        for side in common.alternating(index + plan.start_trials, SIDES):
            awaits = str(plan.awaits_of_child(index))
            extra = ["--await-samples", awaits] if side == "cmlray" else []
            results["launch"][side].append(_spawn(f"launch-{side}", *launch_args, *extra))
            brief = _brief(results["launch"][side][-1])
            common.progress(f"launch round {index + 1}/{plan.launch_rounds} {side}: {brief}")
    for side in SIDES:
        results["soak"][side].append(_spawn(f"soak-{side}", "--soak", str(plan.soak_workers)))
        common.progress(f"soak {side}: {results['soak'][side][-1]['soak_s']:.1f} s")


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _medians(rows: Sequence[Json], key: str) -> float | None:
    return common.median_or_none([row[key] for row in rows if key in row])


def summarize(results: dict[str, dict[str, list[Json]]]) -> Json:
    """Medians per side and ratios cmlray / raw Ray.

    Import and init come from every child (each is a fresh process doing the
    same import and init); shutdown of an idle session from the start
    children, shutdown after launches from the launch children.
    """
    fresh = {side: results["start"][side] + results["launch"][side] for side in SIDES}
    rounds = {side: [r for c in results["launch"][side] for r in c["rounds"]] for side in SIDES}
    medians: dict[str, dict[str, float | None]] = {}
    for key in ("import_s", "init_s"):
        medians[key] = {side: _medians(fresh[side], key) for side in SIDES}
    medians["shutdown_s"] = {side: _medians(results["start"][side], "shutdown_s") for side in SIDES}
    medians["shutdown_after_use_s"] = {
        side: _medians(results["launch"][side], "shutdown_after_use_s") for side in SIDES
    }
    for kind, key in _WAVE_KINDS.items():
        medians[key] = {
            side: _medians([r for r in rounds[side] if r["kind"] == kind], "elapsed_s")
            for side in SIDES
        }
    medians["soak_s"] = {side: _medians(results["soak"][side], "soak_s") for side in SIDES}
    phase_keys = list(dict.fromkeys(k for side in SIDES for r in rounds[side] for k in r["phases"]))
    for key in phase_keys:
        medians[f"phase:{key}"] = {
            side: _medians([r["phases"] for r in rounds[side]], key) for side in SIDES
        }
    footprint = {
        key: {side: _medians(results["start"][side], key) for side in SIDES}
        for key in ("head_processes", "head_rss_mib")
    }
    gaps = [g for c in results["launch"]["cmlray"] for g in c["await_gaps_s"]]
    launches = results["launch"]
    return {
        "medians": medians,
        "ratios": {key: _ratio(pair) for key, pair in medians.items()},
        "paired_ratios": {
            "import_s": _paired(fresh, lambda c: c.get("import_s")),
            "init_s": _paired(fresh, lambda c: c.get("init_s")),
            "shutdown_s": _paired(results["start"], lambda c: c.get("shutdown_s")),
            "shutdown_after_use_s": _paired(launches, lambda c: c.get("shutdown_after_use_s")),
            "launch_first_s": _paired(launches, lambda c: c["rounds"][0]["elapsed_s"]),
            "launch_back_to_back_s": _paired(launches, lambda c: _kind_median(c, "back_to_back")),
            "launch_after_pause_s": _paired(launches, lambda c: _kind_median(c, "after_pause")),
        },
        "footprint": footprint,
        "soak_workers": results["soak"]["cmlray"][0]["soak_workers"],
        "samples_per_side": {
            "init": len(fresh["cmlray"]),
            "idle_shutdown": len(results["start"]["cmlray"]),
            "launch": len(rounds["cmlray"]),
            "soak": len(results["soak"]["cmlray"]),
        },
        "await": {
            "samples": len(gaps),
            "p50_s": statistics.median(gaps),
            "p90_s": percentile(gaps, 0.9),
            "max_s": max(gaps),
            "gaps_s": gaps,
        },
        "goals": {
            "session_start_ratio": START_GOAL,
            "launch_first_ratio": FIRST_WAVE_GOAL,
            "launch_back_to_back_ratio": LATER_WAVE_GOAL,
            "launch_after_pause_ratio": LATER_WAVE_GOAL,
            "soak_s": SOAK_GOAL_S,
            "await_p50_s": AWAIT_GOAL_S,
        },
    }


_WAVE_KINDS = {
    "first": "launch_first_s",
    "back_to_back": "launch_back_to_back_s",
    "after_pause": "launch_after_pause_s",
}


def _kind_median(child: Json, kind: str) -> float | None:
    return _medians([r for r in child["rounds"] if r["kind"] == kind], "elapsed_s")


def _paired(children: dict[str, list[Json]], value: Callable[[Json], float | None]) -> float | None:
    """Median over rounds of cmlray / raw Ray, each round's two children side by side.

    The two children of a round ran one right after the other, so this
    ratio shrugs off load that comes and goes between rounds.
    """
    ratios = []
    for cml, raw in zip(children["cmlray"], children["ray"], strict=False):
        a, b = value(cml), value(raw)
        if a is not None and b:
            ratios.append(a / b)
    return common.median_or_none(ratios)


def _ratio(pair: dict[str, float | None]) -> float | None:
    cml, raw = pair["cmlray"], pair["ray"]
    return cml / raw if cml is not None and raw else None


_LABELS = {
    "import_s": "import",
    "init_s": "session start (init)",
    "shutdown_s": "shutdown (idle session)",
    "shutdown_after_use_s": "shutdown (after launches)",
    "launch_first_s": f"first wave after init: {N_WORKERS} x {WORKER_CPU} CPU -> all done",
    "launch_back_to_back_s": "later waves, back to back (median; no pause in between)",
    "launch_after_pause_s": "later waves, after a pause (median; untimed wait for idle CPUs)",
    "soak_s": "soak: {workers} workers in waves of " + f"{SOAK_WAVE}, one session",
    "phase:launch_call_s": "  phase: launch_workers() call",
    "phase:to_first_running_s": "  phase: start -> first running",
    "phase:to_last_running_s": "  phase: start -> last running",
    "phase:program_median_s": "  phase: program run (median)",
    "phase:last_exit_to_done_s": "  phase: last exit -> all done",
}
_GOALS = {
    "init_s": START_GOAL,
    "launch_first_s": FIRST_WAVE_GOAL,
    "launch_back_to_back_s": LATER_WAVE_GOAL,
    "launch_after_pause_s": LATER_WAVE_GOAL,
}


def _times(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def print_table(summary: Json) -> None:
    from rich.table import Table

    counts = summary["samples_per_side"]
    table = Table(
        title=f"cmlray vs raw Ray, {NUM_CPUS} CPUs (medians; per side: {counts['init']} inits,"
        f" {counts['idle_shutdown']} idle shutdowns, {counts['launch']} launches)"
    )
    columns = ("measure", "cmlray", "raw Ray", "cmlray / raw", "paired by round", "goal")
    for column in columns:
        table.add_column(column, justify="left" if column in ("measure", "goal") else "right")
    for key, pair in summary["medians"].items():
        ratio = summary["ratios"][key]
        goal = ""
        if key in _GOALS and ratio is not None:
            goal = f"<= {_GOALS[key]}x {common.verdict(ratio <= _GOALS[key])}"
        if key == "soak_s" and pair["cmlray"] is not None:
            goal = f"cmlray <= {SOAK_GOAL_S:g} s {common.verdict(pair['cmlray'] <= SOAK_GOAL_S)}"
        table.add_row(
            _LABELS.get(key, key).format(workers=summary["soak_workers"]),
            _seconds(pair["cmlray"]),
            _seconds(pair["ray"]),
            _times(ratio),
            _times(summary["paired_ratios"].get(key)),
            goal,
        )
    labels = {
        "head_processes": "processes of the session (idle)",
        "head_rss_mib": "  their memory (RSS)",
    }
    units = {"head_processes": "{:.0f}", "head_rss_mib": "{:.0f} MiB"}
    for key, pair in summary["footprint"].items():
        if None in pair.values():
            continue
        shown = [units[key].format(pair[side]) for side in SIDES]
        table.add_row(labels[key], *shown, _times(_ratio(pair)), "", "")
    gaps = summary["await"]
    table.add_row(
        f"await return - finished_at (p50; max of {gaps['samples']})",
        f"{gaps['p50_s'] * 1000:.0f} ms; {gaps['max_s'] * 1000:.0f} ms",
        "",
        "",
        "",
        f"<= {AWAIT_GOAL_S * 1000:.0f} ms {common.verdict(gaps['p50_s'] <= AWAIT_GOAL_S)}",
    )
    common.table_console(120).print(table)


def run(args: argparse.Namespace) -> int:
    """The parent: every child, sides alternating, then the table and the JSON."""
    plan = make_plan(args.rounds, args.quick)
    results = new_results()

    def report() -> Json:
        summary = summarize(results)
        print_table(summary)
        return summary

    return common.run_parent(
        lambda: measure(plan, results),
        report,
        plan=plan.__dict__,
        children=results,
        results_path=RESULTS_PATH,
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rounds", type=int, default=None, help="launch children per side (default 3)"
    )
    parser.add_argument("--quick", action="store_true", help="fewer rounds (CI smoke run)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--timed", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--await-samples", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--soak", type=int, default=SOAK_WORKERS, help=argparse.SUPPRESS)
    return common.checked_args(parser, argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    modes: dict[str, Callable[[], Json]] = {  # what a child (--child MODE) runs
        "start-cmlray": child_start_cmlray,
        "start-ray": child_start_ray,
        "launch-cmlray": lambda: child_launch_cmlray(args.timed, args.await_samples),
        "launch-ray": lambda: child_launch_ray(args.timed),
        "soak-cmlray": lambda: child_soak_cmlray(args.soak),
        "soak-ray": lambda: child_soak_ray(args.soak),
    }
    return common.child_or_parent(args.child, modes, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
