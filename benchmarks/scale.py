"""Benchmark: what a worker costs as the count grows, cmlray beside raw Ray actors.

Each measurement runs in a fresh child process (``--child SIDE:PLACE:N``).
An own head of 2 CPUs (``own``) takes N = 10, 100, 500 and 1,000 workers at
once; a cluster of 8 simulated nodes on this machine (``ray.cluster_utils``,
``nodes``: a head of 0 CPU and 8 nodes of 1 CPU) takes 500. Every worker asks
for ``1.9 / N`` CPU (``7.6 / N`` on the 8 nodes) and 15 MiB of memory and
runs one program. Two programs: a shell ``sleep`` (what cmlray itself costs:
the program costs nearly nothing) and the Python program of issue 19
(``import time; print('up', flush=True); time.sleep(...)``: a Python
interpreter starting costs about 30-60 ms of CPU here, the program's own).

Timed, what a user waits for, back to back: from ``launch_workers`` until
``await_workers(wait_for_completion=False)`` returns all running; then
``stop_workers()`` of all, until it returns (every program's whole tree
ended: checked by pid afterwards). Measured: the session process's CPU
(``time.process_time``, all its threads: Ray's included) from before the
launch to after the stop, per worker; memory per worker beyond the programs'
own, after all run: the session process's growth, the node agents' growth
(an agent started for these workers counts whole, and so does a zygote, the
interpreter Python programs are forked from) and every guard's unique
memory (USS), over N. Raw Ray: N actors (``num_cpus=1.9/N``, the same
memory) whose method starts the same program as a subprocess and returns;
running when every call returned; stopped when every actor was killed and
its program ended; memory per worker is each actor process's USS (Ray's own
worker process). Raw Ray runs up to the N whose actors fit this machine's
memory (measured there, extrapolated beyond, and said so).

At 1,000 workers (own head, shell program) the session's responsiveness is
measured too: the latency of a line printed by one more worker (p50 / p99
over 100 lines), ``list_workers()`` (median and max of 20 calls), and one
refresh of the live table (``watch()``'s, 40 rows).

Goals (issue 19): 1,000 all running within 20 s; cmlray's own memory at
most 2 MiB a worker; the session's CPU at most 2 ms a worker; stop-all
within 5 s; line latency p99 <= 50 ms; ``list_workers()`` <= 20 ms.

Usage: ``python benchmarks/scale.py [--quick]`` (``--quick``: 10 and 100
only); JSON in ``benchmarks/results/scale.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import _common as common
from _common import Json

NUM_CPUS = 2
NODES = 8
MEMORY_GIB = 0.015
SHELL = "!sleep 600"
PYTHON = "import time; print('up', flush=True); time.sleep(600)"
PROGRAMS = {"shell": SHELL, "python": PYTHON}
RESULTS_PATH = common.RESULTS_DIR / "scale.json"
GOALS = {"running_1000_s": 20.0, "memory_mib": 2.0, "cpu_ms": 2.0, "stop_s": 5.0}
LATENCY_GOAL_S = 0.050
LIST_GOAL_S = 0.020
RAW_MAX_N = 100  # raw Ray actors beyond this do not fit (measured per actor, extrapolated)
PROBE = (
    "import time\nfor _ in range(100):\n    print(time.time(), flush=True)\n    time.sleep(0.05)"
)


# --------------------------------------------------------------------------
# Children.
# --------------------------------------------------------------------------


def _uss(pid: int) -> int:
    import psutil

    try:
        return int(psutil.Process(pid).memory_full_info().uss)
    except psutil.Error:
        return 0


def _rss(pid: int) -> int:
    import psutil

    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return 0


@contextlib.contextmanager
def _place(place: str) -> Iterator[str | None]:
    """Where the session runs: None for an own head, or a simulated cluster's address."""
    if place == "own":
        yield None
        return
    sys.path.insert(0, str(common.REPO))
    from tests.clusters.simulated import simulated_cluster

    with simulated_cluster([{"num_cpus": 1}] * NODES) as (cluster, _nodes, _temp):
        yield cluster.address


class LineClock(io.StringIO):
    """A console file that notes when each ``[probe] <stamp>`` line arrives."""

    def __init__(self) -> None:
        super().__init__()
        self.delays: list[float] = []

    def write(self, text: str) -> int:
        now = time.time()
        for line in text.splitlines():
            if line.startswith("[probe] "):
                with contextlib.suppress(ValueError):
                    self.delays.append(now - float(line.split()[1]))
        return len(text)


def _agents(session: Any) -> dict[str, int]:
    """The pids of the session's node agents, by node."""
    import ray

    agents = dict(session.agents._agents)
    answers = ray.get([a.handle.ready.remote() for a in agents.values()], timeout=120)
    return {node: int(answer["pid"]) for node, answer in zip(agents, answers, strict=True)}


def _servers(agents: dict[str, int]) -> set[int]:
    """The agents' fork servers and zygotes (their child processes)."""
    import psutil

    found = set()
    for pid in agents.values():
        with contextlib.suppress(psutil.Error):
            found |= {child.pid for child in psutil.Process(pid).children()}
    return found


def _responsiveness(n: int, clock: LineClock) -> Json:
    import cmlray
    from cmlray import _table

    probe = cmlray.launch_workers(
        1,
        cpu=0.05,
        memory=0.05,
        name="probe",
        code=PROBE,
    )
    cmlray.await_workers(probe, timeout_seconds=120)
    lists = []
    for _ in range(20):
        began = time.perf_counter()
        workers = cmlray.list_workers()
        lists.append(time.perf_counter() - began)
    console = common.quiet_console()
    began = time.perf_counter()
    console.print(_table.worker_table(workers, max_rows=40))
    render_s = time.perf_counter() - began
    delays = sorted(clock.delays)
    return {
        "lines": len(delays),
        "line_p50_s": statistics.median(delays) if delays else None,
        "line_p99_s": delays[min(len(delays) - 1, round(0.99 * (len(delays) - 1)))]
        if delays
        else None,
        "list_median_s": statistics.median(lists),
        "list_max_s": max(lists),
        "table_render_s": render_s,
        "workers_listed": len(workers),
    }


def child_cmlray(place: str, n: int, program: str, responsiveness: bool) -> Json:
    import psutil

    import cmlray
    from cmlray import _lifecycle

    result: Json = {"side": "cmlray", "place": place, "n": n, "program": program}
    clock = LineClock()
    console = common.quiet_console()
    console.file = clock
    with _place(place) as address:
        cmlray.init(address=address, num_cpus=None if address else NUM_CPUS, console=console,
                    ship_project=False)  # fmt: skip
        session = _lifecycle.require()
        cpu_per = (NODES * 0.95 if address else NUM_CPUS * 0.95) / n
        me = psutil.Process()
        agents = _agents(session)
        agents_before = {node: _rss(pid) for node, pid in agents.items()}
        servers_before = _servers(agents)
        rss_before = me.memory_info().rss
        cpu_before = time.process_time()
        began = time.perf_counter()
        workers = cmlray.launch_workers(n, cpu=cpu_per, memory=MEMORY_GIB, code=PROGRAMS[program])
        outcome = cmlray.await_workers(workers, wait_for_completion=False, timeout_seconds=600)
        result["running_s"] = time.perf_counter() - began
        result["failed"] = len(outcome["failures"])
        result["failure_reasons"] = sorted({str(f["reason"]) for f in outcome["failures"]})[:5]
        time.sleep(2.0)  # untimed: the figures settle before memory is read
        pids = [w["id"] for w in outcome["workers"]]
        programs = [session.registry.get(i).pid for i in pids]
        guards = {p.ppid() for p in map(psutil.Process, filter(None, programs))}
        agents_after = _agents(session)
        agent_growth = sum(
            _rss(pid) - agents_before.get(node, 0) for node, pid in agents_after.items()
        )
        result["memory"] = {
            "session_growth_mib": (me.memory_info().rss - rss_before) / 2**20,
            "agents_growth_mib": agent_growth / 2**20,
            "guards_uss_mib": sum(_uss(pid) for pid in guards) / 2**20,
            # a zygote started for these workers counts whole, as an agent does
            "new_servers_uss_mib": sum(map(_uss, _servers(agents_after) - servers_before)) / 2**20,
            "guards": len(guards),
            "agents": len(agents_after),
        }
        total = sum(v for k, v in result["memory"].items() if k.endswith("_mib"))
        result["memory_per_worker_mib"] = total / n
        if responsiveness:
            result["responsiveness"] = _responsiveness(n, clock)
        began = time.perf_counter()
        cmlray.stop_workers()
        result["stop_s"] = time.perf_counter() - began
        result["cpu_per_worker_ms"] = (time.process_time() - cpu_before) * 1000 / n
        _, alive = psutil.wait_procs(
            [psutil.Process(p) for p in programs if psutil.pid_exists(p)], 5
        )
        result["programs_left_after_stop"] = len(alive)
        cmlray.shutdown()
    return result


def child_lost(n: int) -> Json:
    """``n`` workers on a node whose raylet dies; meanwhile 8 workers launched on another."""
    import cmlray
    from cmlray import _lifecycle

    sys.path.insert(0, str(common.REPO))
    from tests.clusters.simulated import simulated_cluster

    nodes = [{"num_cpus": 2}, {"num_cpus": 2, "resources": {"accelerator_type:DOOM": 1}}]
    with simulated_cluster(nodes) as (cluster, (_, doomed), _temp):
        cmlray.init(address=cluster.address, console=common.quiet_console(), ship_project=False)
        registry = _lifecycle.require().registry
        victims = cmlray.launch_workers(n, cpu=1.9 / n, memory=MEMORY_GIB, code=SHELL,
                                        accelerator_label_id="DOOM")  # fmt: skip
        outcome = cmlray.await_workers(victims, wait_for_completion=False, timeout_seconds=300)
        assert not outcome["failures"], outcome["failures"][:1]
        _wave_s()  # the other node's agent starts: untimed, as it was warm when the node is lost
        normal = _wave_s()
        killed = time.time()
        cluster.remove_node(doomed, allow_graceful=False)
        during = _wave_s()
        cmlray.await_workers(victims, timeout_seconds=300)
        ended = [registry.get(w["id"]) for w in victims]
        reasons = sorted({str(r.reason) for r in ended})
        finished = [r.finished_at for r in ended if r.finished_at is not None]
        cmlray.shutdown()
    return {
        "side": "cmlray", "place": "lost", "n": n, "reasons": reasons,
        "first_lost_s": min(finished) - killed, "last_lost_s": max(finished) - killed,
        "wave_before_s": normal, "wave_during_s": during,
    }  # fmt: skip


def _wave_s() -> float:
    """8 workers of 0.2 CPU printing a line on the node that stays: launch to all done."""
    import cmlray

    began = time.perf_counter()
    wave = cmlray.launch_workers(8, cpu=0.2, memory=0.05, code="!echo up")
    done = cmlray.await_workers(wave, timeout_seconds=120)
    assert not done["failures"], done["failures"][:1]
    return time.perf_counter() - began


class RawWorker:
    """The raw-Ray side: an actor that starts the program and stops it."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, argv: list[str]) -> int:
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        import os

        return os.getpid()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()


def child_ray(place: str, n: int, program: str) -> Json:
    import psutil

    result: Json = {"side": "ray", "place": place, "n": n, "program": program}
    argv = ["sleep", "600"] if program == "shell" else [sys.executable, "-u", "-c", PYTHON]
    temp_dir = common.enable_token_auth() if place == "own" else None
    import ray

    with _place(place) as address:
        if address is None:
            assert temp_dir is not None
            common.ray_init(temp_dir, NUM_CPUS)
        else:
            ray.init(address=address, log_to_driver=False)
        cpu_per = (NODES * 0.95 if address else NUM_CPUS * 0.95) / n
        me = psutil.Process()
        rss_before, cpu_before = me.memory_info().rss, time.process_time()
        actor = ray.remote(RawWorker).options(num_cpus=cpu_per, memory=int(MEMORY_GIB * 2**30))
        began = time.perf_counter()
        actors = [actor.remote() for _ in range(n)]
        pids = ray.get([a.start.remote(argv) for a in actors], timeout=600)
        result["running_s"] = time.perf_counter() - began
        result["failed"] = 0
        time.sleep(2.0)
        actor_uss = sum(_uss(pid) for pid in pids)
        result["memory"] = {
            "session_growth_mib": (me.memory_info().rss - rss_before) / 2**20,
            "actors_uss_mib": actor_uss / 2**20,
        }
        result["memory_per_worker_mib"] = (
            (actor_uss + me.memory_info().rss - rss_before) / 2**20 / n
        )
        began = time.perf_counter()
        ray.get([a.stop.remote() for a in actors], timeout=600)
        for a in actors:
            ray.kill(a)
        psutil.wait_procs([psutil.Process(p) for p in pids if psutil.pid_exists(p)], 60)
        result["stop_s"] = time.perf_counter() - began
        result["cpu_per_worker_ms"] = (time.process_time() - cpu_before) * 1000 / n
        if address is None:
            assert temp_dir is not None
            common.ray_shutdown(result, "shutdown_s", temp_dir)
        else:
            ray.shutdown()
    return result


# --------------------------------------------------------------------------
# Parent.
# --------------------------------------------------------------------------


def plan(quick: bool) -> list[tuple[str, str, int, str]]:
    """(side, place, N, program) of every child, in order."""
    sizes = (10, 100) if quick else (10, 100, 500, 1000)
    runs = []
    for program in ("shell", "python"):
        for n in sizes:
            runs.append(("cmlray", "own", n, program))
            if n <= RAW_MAX_N:
                runs.append(("ray", "own", n, program))
    if not quick:
        runs += [("cmlray", "nodes", 500, "shell"), ("ray", "nodes", RAW_MAX_N, "shell")]
        runs += [("cmlray", "lost", 300, "shell")]
    return runs


def measure(runs: Sequence[tuple[str, str, int, str]], children: list[Json]) -> None:
    for side, place, n, program in runs:
        child = common.spawn_child(__file__, f"{side}:{place}:{n}:{program}")
        children.append(child)
        if place == "lost":
            common.progress(f"lost node with {n} workers: {child}")
            continue
        common.progress(
            f"{side} {place} N={n} {program}: running {child['running_s']:.2f} s,"
            f" stop {child['stop_s']:.2f} s, {child['memory_per_worker_mib']:.2f} MiB/worker,"
            f" {child['cpu_per_worker_ms']:.2f} ms CPU/worker, failed {child['failed']}"
        )


def _pair(
    children: Sequence[Json], place: str, n: int, program: str
) -> tuple[Json | None, Json | None]:
    found = {
        c["side"]: c
        for c in children
        if (c["place"], c["n"], c.get("program")) == (place, n, program)
    }
    return found.get("cmlray"), found.get("ray")


def summarize(children: Sequence[Json]) -> Json:
    rows = []
    for child in children:
        if child["side"] != "cmlray" or child["place"] == "lost":
            continue
        _, raw = _pair(children, child["place"], child["n"], child["program"])
        row = {k: child[k] for k in ("place", "n", "program", "running_s", "stop_s", "failed",
                                      "memory_per_worker_mib", "cpu_per_worker_ms")}  # fmt: skip
        row["memory"] = child["memory"]
        row["programs_left_after_stop"] = child["programs_left_after_stop"]
        if raw is not None:
            row["raw"] = {k: raw[k] for k in ("running_s", "stop_s", "memory_per_worker_mib",
                                               "cpu_per_worker_ms")}  # fmt: skip
            row["ratio_running"] = child["running_s"] / raw["running_s"]
        rows.append(row)
    responsive = next((c["responsiveness"] for c in children if "responsiveness" in c), None)
    lost = next((c for c in children if c["place"] == "lost"), None)
    raw_nodes = next((c for c in children if (c["side"], c["place"]) == ("ray", "nodes")), None)
    return {"rows": rows, "responsiveness": responsive, "lost": lost, "raw_nodes": raw_nodes,
            "goals": GOALS}  # fmt: skip


def print_tables(summary: Json) -> None:
    from rich.table import Table

    table = Table(
        title=f"Workers at once: cmlray vs raw Ray actors ({NUM_CPUS} cores;"
        f" 'nodes': {NODES} simulated nodes)"
    )
    for column in ("place", "N", "program", "launch -> all running", "raw Ray", "ratio",
                   "stop all", "raw Ray", "session CPU / worker", "cmlray memory / worker",
                   "raw Ray memory / worker", "failed"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("place", "program") else "right")
    for row in summary["rows"]:
        raw = row.get("raw", {})
        table.add_row(
            row["place"], str(row["n"]), row["program"],
            f"{row['running_s']:.2f} s", f"{raw['running_s']:.2f} s" if raw else "does not fit",
            f"{row['ratio_running']:.2f}" if "ratio_running" in row else "-",
            f"{row['stop_s']:.2f} s", f"{raw['stop_s']:.2f} s" if raw else "-",
            f"{row['cpu_per_worker_ms']:.2f} ms", f"{row['memory_per_worker_mib']:.2f} MiB",
            f"{raw['memory_per_worker_mib']:.1f} MiB" if raw else "-",
            str(row["failed"]),
        )  # fmt: skip
    console = common.table_console(160)
    console.print(table)
    raw = summary["raw_nodes"]
    if raw:
        console.print(
            f"Raw Ray on the {NODES} nodes, {raw['n']} actors: all running in"
            f" {raw['running_s']:.2f} s, stopped in {raw['stop_s']:.2f} s,"
            f" {raw['memory_per_worker_mib']:.1f} MiB a worker"
        )
    lost = summary["lost"]
    if lost:
        console.print(
            f"A node lost under {lost['n']} workers: reported {', '.join(lost['reasons'])}, the"
            f" first {lost['first_lost_s']:.2f} s and the last {lost['last_lost_s']:.2f} s after"
            f" its raylet was killed; 8 workers on the other node meanwhile"
            f" {lost['wave_during_s']:.2f} s (before: {lost['wave_before_s']:.2f} s)"
        )
    responsive = summary["responsiveness"]
    if responsive:
        console.print(
            f"At 1,000 workers: line latency p50 {responsive['line_p50_s'] * 1000:.1f} ms,"
            f" p99 {responsive['line_p99_s'] * 1000:.1f} ms (goal <= {LATENCY_GOAL_S * 1000:.0f} ms"
            f" {common.verdict(responsive['line_p99_s'] <= LATENCY_GOAL_S)}); list_workers()"
            f" median {responsive['list_median_s'] * 1000:.1f} ms, max"
            f" {responsive['list_max_s'] * 1000:.1f} ms (goal <= {LIST_GOAL_S * 1000:.0f} ms"
            f" {common.verdict(responsive['list_median_s'] <= LIST_GOAL_S)}); the live table's"
            f" refresh {responsive['table_render_s'] * 1000:.1f} ms"
        )


def run(args: argparse.Namespace) -> int:
    runs = plan(args.quick)
    children: list[Json] = []

    def report() -> Json:
        summary = summarize(children)
        print_tables(summary)
        return summary

    return common.run_parent(
        lambda: measure(runs, children),
        report,
        plan={"runs": runs, "memory_gib": MEMORY_GIB},
        children=children,
        results_path=RESULTS_PATH,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 and 100 workers only")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        side, place, n, program = args.child.split(":")
        size = int(n)
        modes: dict[str, Callable[[], Json]] = {
            "cmlray": lambda: child_cmlray(
                place, size, program, place == "own" and size >= 1000 and program == "shell"
            ),
            "ray": lambda: child_ray(place, size, program),
        }
        if place == "lost":
            common.emit(child_lost(size))
            return 0
        common.emit(modes[side]())
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
