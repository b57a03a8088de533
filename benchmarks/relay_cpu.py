"""Benchmark: what relaying a steady trickle of lines costs, cmlray beside raw Ray, same run.

Many workers each printing a line now and then (progress, a loss per
epoch) is the common case at scale, and each line's cost is the session's
and the node agents' CPU, taken from the node the workers run on. Each side
runs in a fresh child process (``--child SIDE``); sides take turns, round
after round; medians are reported.

- **cmlray**: ``launch_workers(20, cpu=0.01, code=...)``, each program
  printing a line every 20 ms (1,000 lines a second in all) for ``RUN_S``,
  into the session's console (a Rich console writing to memory).
- **cmlray, 100 workers**: the same 1,000 lines a second from 100 workers
  of 10 lines a second each (raw Ray is not run so: each actor is a Ray
  worker process of its own, about 80 MiB and 0.4 s of CPU to start).
- **raw Ray**: 20 actors (``num_cpus=0.01``) printing the same lines,
  ``log_to_driver=True`` (Ray's log monitor tails their files and the
  driver prints what it forwards), ``RAY_DEDUP_LOGS=0``, token auth, no
  dashboard; the driver's ``sys.stdout`` is the same kind of memory file.

Measured once every writer runs: over ``WINDOW_S``, the CPU time (user +
system) of the session's process and of every process below it, less the
writers' own programs (cmlray: the workers' programs; raw Ray: the actor
processes, which print themselves): what relaying costs beside the work.
Reported as a share of one core and per line shown. The lines are counted
once the writers end: fewer than 90% of what their sleeps allow fails the
run. No issue sets a goal here; the table says where each side stands.

Usage: ``python benchmarks/relay_cpu.py [--rounds N] [--quick]`` (default 3
rounds; ``--quick``: 1 round); JSON in ``benchmarks/results/relay_cpu.json``.
To compare two builds of cmlray, run it from a directory holding no
``cmlray`` with ``PYTHONPATH`` naming the build: Ray puts the session's
working directory first on its workers' ``sys.path``, so a node agent started
from the repository imports the repository's copy.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import _common as common
from _common import Json
from relay_end_to_end import ArrivalFile

NUM_CPUS = 2
RATE = 1000.0  # lines a second, all writers together
RUN_S = 8.0
SETTLE_S = 1.5  # from the launch until every writer prints
WINDOW_S = 5.0
WRITER_CPU = 0.01
SIDES = ("cmlray", "cmlray_100", "ray")
WRITERS = {"cmlray": 20, "cmlray_100": 100, "ray": 20}
MARKER = "relay-cpu-writer"
RESULTS_PATH = common.RESULTS_DIR / "relay_cpu.json"
PROGRAM = """
import time
# {marker}
period, end = {period!r}, time.time() + {run_s!r}
i = 0
while time.time() < end:
    print("progress", i, flush=True)
    i += 1
    time.sleep(period)
"""


def writes(period_s: float) -> int:
    """Lines one writer prints in ``RUN_S`` at one line per ``period_s`` (about)."""
    return int(RUN_S / period_s)


def overhead_cpu_s(is_writer: Callable[[Any], bool]) -> float:
    """CPU seconds so far of this process and all below it, writers left out."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            if is_writer(proc):
                continue
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:  # ended meanwhile
            continue
    return total


def window(is_writer: Callable[[Any], bool]) -> float:
    """The overhead's CPU seconds over ``WINDOW_S``, every writer running."""
    before = overhead_cpu_s(is_writer)
    time.sleep(WINDOW_S)  # the measured window: the writers print meanwhile
    return overhead_cpu_s(is_writer) - before


def _cmdline_has_marker(proc: Any) -> bool:
    return any(MARKER in part for part in proc.cmdline())


def child_cmlray(workers: int) -> Json:
    import cmlray

    period = workers / RATE
    file = ArrivalFile()
    from rich.console import Console

    cmlray.init(num_cpus=NUM_CPUS, console=Console(file=file, force_terminal=False, width=120))
    try:
        code = PROGRAM.format(marker=MARKER, period=period, run_s=RUN_S)
        launched = cmlray.launch_workers(workers, cpu=WRITER_CPU, memory=0.02, code=code)
        time.sleep(SETTLE_S)  # untimed: every writer started (checked by the lines below)
        cpu_s = window(_cmdline_has_marker)
        cmlray.await_workers(launched, timeout_seconds=120)
        file.settle()
    finally:
        cmlray.shutdown()
    return _result("cmlray" if workers == 20 else "cmlray_100", workers, period, cpu_s, file)


class Writer:
    """A raw Ray actor that prints like a cmlray worker's program."""

    def run(self, period: float) -> int:
        end, i = time.time() + RUN_S, 0
        while time.time() < end:
            print("progress", i, flush=True)
            i += 1
            time.sleep(period)
        return i


def child_ray(workers: int) -> Json:
    os.environ["RAY_DEDUP_LOGS"] = "0"
    os.environ["RAY_COLOR_PREFIX"] = "0"
    temp_dir = common.enable_token_auth()  # before Ray is imported: it caches its config
    import ray

    period = workers / RATE
    timings: Json = {}
    common.ray_init(temp_dir, NUM_CPUS, log_to_driver=True)
    file, stdout = ArrivalFile(), sys.stdout
    sys.stdout = file  # where Ray prints forwarded lines (looked up at each print)
    try:
        writer = ray.remote(num_cpus=WRITER_CPU)(Writer)
        actors = [writer.remote() for _ in range(workers)]
        calls = [actor.run.remote(period) for actor in actors]
        time.sleep(SETTLE_S)
        cpu_s = window(lambda proc: proc.name() == "ray::Writer")
        ray.get(calls, timeout=120)
        file.settle()
        for actor in actors:
            ray.kill(actor)
    finally:
        sys.stdout = stdout
        common.ray_shutdown(timings, "shutdown_s", temp_dir)
    return _result("ray", workers, period, cpu_s, file)


def _result(side: str, workers: int, period: float, cpu_s: float, file: ArrivalFile) -> Json:
    shown = sum(1 for _, line in file.lines() if "progress" in line)
    expected_at_least = workers * writes(period) * 0.9  # sleep overshoots: a few fewer
    if shown < expected_at_least:
        raise RuntimeError(
            f"{side}: {shown} lines shown, expected about {workers * writes(period)}"
        )
    rate = shown / RUN_S  # the lines a second the writers kept up (a little under RATE)
    return {
        "side": side, "workers": workers, "cpu_s": cpu_s, "window_s": WINDOW_S,
        "core_share": cpu_s / WINDOW_S, "ms_per_line": 1000 * cpu_s / (rate * WINDOW_S),
        "lines_shown": shown, "lines_per_s": rate,
    }  # fmt: skip


def child(side: str) -> Json:
    if side == "ray":
        return child_ray(WRITERS[side])
    return child_cmlray(WRITERS[side])


def said(result: Json) -> str:
    """A child's result in a progress line."""
    share, per_line = 100 * result["core_share"], result["ms_per_line"]
    return f"{share:.1f}% of a core, {per_line:.3f} ms a line, {result['lines_shown']} lines"


def summarize(children: Sequence[Json]) -> Json:
    keys = ("core_share", "ms_per_line")
    table = common.medians_by_side(children, SIDES, keys, runs_of="core_share")
    return {
        "table": table,
        "ray_vs_cmlray": table["ray"]["core_share"] / table["cmlray"]["core_share"],
    }


LABELS = {
    "cmlray": "cmlray, 20 workers x 50 lines/s",
    "cmlray_100": "cmlray, 100 workers x 10 lines/s",
    "ray": "raw Ray log_to_driver, 20 actors x 50 lines/s",
}


def print_table(summary: Json) -> None:
    from rich.table import Table

    table = Table(
        title=f"Relaying {RATE:,.0f} lines/s: the CPU beside the writers (median of rounds)"
    )
    for column in ("side", "share of a core", "per line", "side / cmlray"):
        table.add_column(column, justify="left" if column == "side" else "right")
    ours = summary["table"]["cmlray"]["core_share"]
    for side in SIDES:
        row = summary["table"][side]
        share, per_line = f"{100 * row['core_share']:.1f}%", f"{row['ms_per_line']:.3f} ms"
        table.add_row(LABELS[side], share, per_line, f"{row['core_share'] / ours:.2f}")
    common.table_console(120).print(table)


def main(argv: Sequence[str] | None = None) -> int:
    return common.sides_main(
        argv, __doc__,
        script=__file__, sides=SIDES, said=said, child=child,
        summarize=summarize, show=print_table,
        plan=lambda rounds: {
            "rounds": rounds, "rate": RATE, "writers": WRITERS, "window_s": WINDOW_S
        },
        results_path=RESULTS_PATH,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
