"""Benchmark: the candidate launch paths of warm fan-out, measured in one run.

A cmlray worker must hold a CPU / memory / GPU request Ray accounts for, run
a program, and be stoppable at any time. Three ways to do that on Ray, each
in fresh child processes (``python benchmarks/launch_designs.py --child DESIGN``),
the designs taking turns round after round (the machine is shared):

- ``actor``: a Ray actor per worker (``num_cpus=0.25``) whose method runs the
  program with ``subprocess``; stopped with ``ray.kill``. cmlray's first
  version; each worker costs a fresh Ray worker process.
- ``task``: a Ray task per worker (``num_cpus=0.25, max_retries=0``) running
  the program, on Ray's reusable worker pool (warm after the first wave);
  stopped with ``ray.cancel(force=True)``, the only way to end a running
  task, which kills its pool process.
- ``agent``: cmlray's path (one warm agent per node, a placement group
  bundle per worker), ``launch_workers`` / ``stop_workers``.

Each child: token auth on, a head of 2 CPUs, then waves of 8 workers printing
one line, timed launch to all done: the first wave after init, then later
waves, each on idle CPUs. Then a *stop wave*: 8 workers running ``sleep 60``,
all stopped once running (untimed), then one more hello wave, timed: what a
stop costs the next launch. Reported: medians per design and each / actor.

Usage: ``python benchmarks/launch_designs.py [--rounds N] [--quick]`` (default 2
children per design; ``--quick``: 1); JSON in ``benchmarks/results/designs.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import _common as common
from _common import Json

DESIGNS = ("actor", "task", "agent")
NUM_CPUS = 2
N_WORKERS = 8
WORKER_CPU = 0.25
LATER_WAVES = 5
HELLO = [sys.executable, "-c", "print('hello')"]
IDLE_TIMEOUT_S = 30.0
RESULTS_PATH = common.RESULTS_DIR / "designs.json"


def _wait_idle() -> None:
    common.wait_idle(NUM_CPUS, IDLE_TIMEOUT_S)


def _wait_files(folder: Path, count: int) -> None:
    deadline = time.monotonic() + IDLE_TIMEOUT_S
    while len(list(folder.iterdir())) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(list(folder.iterdir()))} of {count} started")
        time.sleep(0.02)


def _sleeper(folder: Path) -> list[str]:
    """A program that marks its start in ``folder``, then sleeps."""
    code = "import os, sys, time; open(os.path.join(sys.argv[1], str(os.getpid())), 'w'); "
    return [sys.executable, "-c", code + "time.sleep(60)", str(folder)]


class RawRay:
    """The ``actor`` and ``task`` designs: raw Ray."""

    def __init__(self, design: str) -> None:
        self.temp_dir = common.enable_token_auth()  # before Ray is imported: it caches its config
        import ray

        self.design, self.ray = design, ray
        common.ray_init(self.temp_dir, NUM_CPUS)

        def run(argv: list[str]) -> str:
            import subprocess

            return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

        class Runner:
            def run(self, argv: list[str]) -> str:
                return run(argv)

        self.task = ray.remote(num_cpus=WORKER_CPU, max_retries=0)(run)
        self.actor = ray.remote(num_cpus=WORKER_CPU, max_restarts=0)(Runner)
        self.actors: list[object] = []

    def launch(self, argv: list[str]) -> list[object]:
        if self.design == "task":
            return [self.task.remote(argv) for _ in range(N_WORKERS)]
        self.actors = [self.actor.remote() for _ in range(N_WORKERS)]
        return [a.run.remote(argv) for a in self.actors]  # type: ignore[attr-defined]

    def wave(self) -> None:
        outputs = self.ray.get(self.launch(HELLO))
        if outputs != ["hello\n"] * N_WORKERS:
            raise RuntimeError(f"unexpected output: {outputs}")
        self.end_actors()

    def stop(self, refs: list[object]) -> None:
        if self.design == "task":
            for ref in refs:
                self.ray.cancel(ref, force=True)
        self.end_actors()

    def end_actors(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []

    def close(self, into: Json) -> None:
        common.ray_shutdown(into, "shutdown_s", self.temp_dir)


class Agent:
    """The ``agent`` design: cmlray's own path."""

    def __init__(self) -> None:
        import cmlray

        self.cmlray = cmlray
        cmlray.init(num_cpus=NUM_CPUS, console=common.quiet_console())

    def launch(self, argv: list[str]) -> list[dict[str, object]]:
        from shlex import join

        command = "!" + join(argv)
        return self.cmlray.launch_workers(N_WORKERS, cpu=WORKER_CPU, memory=0.1, code=command)

    def wave(self) -> None:
        done = self.cmlray.await_workers(self.launch(HELLO))
        if done["failures"] or [w["tail"] for w in done["workers"]] != [["hello"]] * N_WORKERS:
            raise RuntimeError(f"unexpected outcome: {done['failures']}")

    def stop(self, workers: list[dict[str, object]]) -> None:
        self.cmlray.stop_workers(*workers)

    def close(self, into: Json) -> None:
        with common.timer(into, "shutdown_s"):
            self.cmlray.shutdown()


def _timed_wave(side: RawRay | Agent) -> float:
    _wait_idle()
    started = time.perf_counter()
    side.wave()
    return time.perf_counter() - started


def child(design: str) -> Json:
    result: Json = {"design": design}
    with common.timer(result, "init_s"):
        side: RawRay | Agent = Agent() if design == "agent" else RawRay(design)
    result["first_s"] = _timed_wave(side)
    result["later_s"] = [_timed_wave(side) for _ in range(LATER_WAVES)]
    with tempfile.TemporaryDirectory(prefix="designs-") as folder:
        _wait_idle()
        running = side.launch(_sleeper(Path(folder)))
        _wait_files(Path(folder), N_WORKERS)
        side.stop(running)  # type: ignore[arg-type]
    result["after_stop_s"] = _timed_wave(side)
    side.close(result)
    return result


def summarize(children: dict[str, list[Json]]) -> Json:
    keys: dict[str, Callable[[Json], float]] = {
        "first wave after init": lambda c: c["first_s"],
        f"later waves (median of {LATER_WAVES})": lambda c: statistics.median(c["later_s"]),
        "the wave after a stop wave": lambda c: c["after_stop_s"],
    }
    medians = {
        label: {d: statistics.median(get(c) for c in children[d]) for d in DESIGNS}
        for label, get in keys.items()
    }
    return {"medians_s": medians, "vs_actor": {
        label: {d: row[d] / row["actor"] for d in DESIGNS} for label, row in medians.items()
    }}  # fmt: skip


def print_table(summary: Json) -> None:
    from rich.table import Table

    table = Table(title=f"launch paths: {N_WORKERS} workers x {WORKER_CPU} CPU printing a line, "
                  f"launch -> all done, {NUM_CPUS} CPUs (medians; ratio to actor)")  # fmt: skip
    table.add_column("wave")
    for design in DESIGNS:
        table.add_column(design, justify="right")
    for label, row in summary["medians_s"].items():
        ratios = summary["vs_actor"][label]
        table.add_row(label, *(f"{row[d]:.3f} s ({ratios[d]:.2f}x)" for d in DESIGNS))
    common.table_console(120).print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=DESIGNS)
    parser.add_argument("--rounds", type=int, default=None, help="children per design (2)")
    parser.add_argument("--quick", action="store_true", help="one child per design")
    args = common.checked_args(parser, argv)
    args.rounds = args.rounds or (1 if args.quick else 2)
    if args.child:
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        common.emit(child(args.child))
        return 0
    children: dict[str, list[Json]] = {d: [] for d in DESIGNS}

    def measure() -> None:
        for index in range(args.rounds):
            order = DESIGNS[index % 3 :] + DESIGNS[: index % 3]
            for design in order:
                children[design].append(common.spawn_child(__file__, design))
                one = children[design][-1]
                common.progress(f"round {index + 1} {design}: first {one['first_s']:.2f}, "
                                f"after stop {one['after_stop_s']:.2f}")  # fmt: skip

    def report() -> Json:
        summary = summarize(children)
        print_table(summary)
        return summary

    plan = {"rounds": args.rounds, "workers": N_WORKERS, "later_waves": LATER_WAVES}
    return common.run_parent(
        measure, report, plan=plan, children=children, results_path=RESULTS_PATH
    )


if __name__ == "__main__":
    sys.exit(main())
