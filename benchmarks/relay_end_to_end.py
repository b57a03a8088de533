"""Benchmark: workers' output through cmlray against raw Ray's log forwarding, side by side.

Issue "Output relay" goals: 0 lines lost, 0 fragments, order kept within a
worker, throughput >= 4x raw Ray's, print-to-console latency p99 <= 50 ms.

Each side runs in a fresh child process of this script (``--child SIDE``);
the children take turns going first, round after round (the machine is
shared and noisy), and ratios are taken per round as well as of medians.

1. Throughput. 4 workers each write 50,000 numbered lines
   (``f"{tag} {i:06d} {payload}"``, 97 bytes) as fast as they can; the same
   function (:func:`flood`) on both sides. Two kinds of flood: *line by
   line* (one ``sys.stdout.write`` per line: the issue's load, where the
   goals apply) and *bulk* (1,000 lines joined per write: the writers cost
   little, so the output path's own capacity shows). cmlray:
   ``launch_workers(4, cpu=0.5, memory=0.2, code=...)``, the session's
   console a plain (non-terminal) Rich console whose file keeps every write
   with its arrival time. Raw Ray: 4 actors (``num_cpus=0.5``) calling
   :func:`flood` themselves, ``ray.init(log_to_driver=True)`` with
   ``RAY_DEDUP_LOGS=0`` (and ``RAY_COLOR_PREFIX=0``: plain lines), token auth
   as cmlray sets it up, no dashboard; the driver's ``sys.stdout``, where Ray
   prints forwarded lines, is replaced by the same kind of file. Time runs
   from the launch (actor creation for raw Ray) to the arrival of the last
   line; lines/s counts distinct lines received whole. Every line received is
   parsed: a worker-prefixed line (``[name] `` or ``(... pid=...) ``) whose
   text is not one whole expected line is a *fragment*; an expected line
   missing is *lost*, one seen twice *duplicated*; a line whose number is
   below one already seen from its worker is an *order violation*. Ray's own
   lines (``(raylet)``, ``[cmlray]``) are counted apart as *other*. Where the
   time went: launch to first line shown, launch to the last program done
   writing (cmlray: the workers' ``finished_at``; raw Ray: the actor method's
   own end stamp), and the *lag* from there to the last line shown (how far
   the output path trails the writers), plus lines/s from first to last line.
   A few fragments, cut to 120 characters, are kept in the JSON.
2. Latency. One worker writes ``LAT <time.time()> <i>`` at 1,000 lines/s for
   3 s (:func:`paced`, flushing each line); latency is the line's arrival in
   the console file minus its stamp (same machine, same clock). The goal is
   for cmlray; raw Ray's is shown for reference.

A Rich table is printed; everything, raw samples included, is written to
``benchmarks/results/relay.json``. Every process of the run carries a mark;
any left at the end is killed by pid (never ``ray stop``) and reported.

Usage: ``python benchmarks/relay_end_to_end.py [--rounds N] [--quick]``: N children
per side (default 2); ``--quick``: 1.
"""

from __future__ import annotations

import argparse
import inspect
import io
import os
import re
import statistics
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from typing import IO, Any, cast

import _common as common
from _common import SIDES, Json

NUM_CPUS = 4
WORKERS = 4
LINES = 50_000
WORKER_CPU = 0.5
WORKER_MEMORY_GIB = 0.2
PAYLOAD = "abcdefghijklmnopqrstuvwxyz0123456789" * 2
FLOODS = {"line": 1, "bulk": 1000}  # kind: lines per write
LATENCY_RATE = 1000.0
LATENCY_LINES = 3000
QUIET_S = 2.0  # output is complete once nothing arrived for this long
DRAIN_TIMEOUT_S = 150.0
THROUGHPUT_GOAL = 4.0
P99_GOAL_S = 0.050
RESULTS_PATH = common.RESULTS_DIR / "relay.json"

PREFIXED = re.compile(r"(?:\[(?P<name>[^\]]+)\]|\((?P<ray>[^)]*)\)) ?(?P<text>.*)")
FLOOD_LINE = re.compile(rf"(?P<tag>\S+) (?P<index>\d{{6}}) {re.escape(PAYLOAD)}")
LATENCY_LINE = re.compile(r"LAT (?P<stamp>\d+\.\d+) (?P<index>\d{6})")


# --------------------------------------------------------------------------
# What the workers run, on both sides.
# --------------------------------------------------------------------------


def flood(tag: str, lines: int, payload: str, per_write: int) -> float:
    """Write ``lines`` numbered lines to stdout, ``per_write`` a write, as fast as possible.

    Returns when it was done (``time.time()``).
    """
    import sys
    import time

    write = sys.stdout.write
    for start in range(0, lines, per_write):
        end = min(lines, start + per_write)
        write("".join(f"{tag} {i:06d} {payload}\n" for i in range(start, end)))
    sys.stdout.flush()
    return time.time()


def paced(rate: float, lines: int) -> None:
    """Write ``lines`` lines stamped with ``time.time()``, ``rate`` a second, each flushed."""
    import sys
    import time

    start = time.time()
    for i in range(lines):
        delay = start + i / rate - time.time()
        if delay > 0:
            time.sleep(delay)
        sys.stdout.write(f"LAT {time.time():.6f} {i:06d}\n")
        sys.stdout.flush()


def worker_code(function: Callable[..., object], call: str) -> str:
    """Source for a cmlray worker: ``function``'s own source, then ``call``."""
    return textwrap.dedent(inspect.getsource(function)) + "\n" + call + "\n"


class RawPrinter:
    """The raw-Ray worker: an actor printing from its own process."""

    def ready(self) -> bool:
        return True

    def flood(self, tag: str, lines: int, payload: str, per_write: int) -> float:
        return flood(tag, lines, payload, per_write)

    def paced(self, rate: float, lines: int) -> None:
        paced(rate, lines)


# --------------------------------------------------------------------------
# The console file and what arrived in it.
# --------------------------------------------------------------------------


class ArrivalFile(io.TextIOBase):
    """A text file keeping every write with its arrival time (``time.time()``)."""

    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[tuple[float, str]] = []

    def write(self, text: str) -> int:
        self.chunks.append((time.time(), text))
        return len(text)

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        """Nothing is buffered."""

    def reset(self) -> None:
        self.chunks = []

    def settle(self, quiet_s: float = QUIET_S, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Wait until nothing has arrived for ``quiet_s`` (at most ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        seen, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            if len(self.chunks) != seen:
                seen, since = len(self.chunks), time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                return
            time.sleep(0.05)

    def lines(self) -> list[tuple[float, str]]:
        """Every complete line, with the arrival of the write that completed it."""
        lines, partial = [], ""
        for arrival, text in self.chunks:
            *complete, partial = (partial + text).split("\n")
            lines += [(arrival, line) for line in complete]
        return lines


def analyse_flood(lines: Sequence[tuple[float, str]], t0: float, programs_done: float) -> Json:
    """Lines/s, lost, duplicated, fragments, order violations of one flood.

    ``t0``: the launch; ``programs_done``: when the last worker had written
    its last line. Times in the result are seconds after ``t0``.
    """
    seen: dict[str, set[int]] = {}
    highest: dict[str, int] = {}
    counts = {"fragments": 0, "order_violations": 0, "duplicated": 0, "other": 0}
    examples: list[str] = []
    first, last = None, t0
    for arrival, line in lines:
        prefixed = PREFIXED.fullmatch(line)
        if prefixed is None or prefixed["name"] == "cmlray" or prefixed["ray"] == "raylet":
            counts["other"] += 1
            continue
        match = FLOOD_LINE.fullmatch(prefixed["text"])
        if match is None:
            counts["fragments"] += 1
            examples = examples if len(examples) >= 5 else [*examples, line[:120]]
            continue
        tag, index = match["tag"], int(match["index"])
        counts["duplicated"] += index in seen.setdefault(tag, set())
        counts["order_violations"] += index < highest.get(tag, -1)
        seen[tag].add(index)
        highest[tag] = max(index, highest.get(tag, -1))
        first, last = first or arrival, arrival
    received = sum(len(indexes) for indexes in seen.values())
    elapsed, streaming = last - t0, last - (first or last)
    return {
        "elapsed_s": elapsed,
        "first_line_s": (first or last) - t0,
        "programs_done_s": programs_done - t0,
        "lag_s": last - programs_done,
        "received": received,
        "lines_per_s": received / elapsed if elapsed > 0 else 0.0,
        "streaming_lines_per_s": received / streaming if streaming > 0 else 0.0,
        "lost": WORKERS * LINES - received,
        "workers_seen": len(seen),
        **counts,
        "fragment_examples": examples,
    }


def analyse_latency(lines: Sequence[tuple[float, str]]) -> Json:
    """Each paced line's arrival minus its stamp; lines missing."""
    latencies = []
    for arrival, line in lines:
        prefixed = PREFIXED.fullmatch(line)
        match = LATENCY_LINE.fullmatch(prefixed["text"]) if prefixed else None
        if match is not None:
            latencies.append(arrival - float(match["stamp"]))
    return {"lost": LATENCY_LINES - len(latencies), "latencies_s": latencies}


# --------------------------------------------------------------------------
# Children: one side each, in a fresh interpreter; one JSON line back.
# --------------------------------------------------------------------------


def _cmlray_round(file: ArrivalFile, code: str, n: int) -> tuple[float, float]:
    """Launch ``n`` workers running ``code``, wait for them and their output.

    Returns the launch time and the last worker's ``finished_at``.
    """
    import cmlray

    file.reset()
    t0 = time.time()
    workers = cmlray.launch_workers(n, cpu=WORKER_CPU, memory=WORKER_MEMORY_GIB, code=code)
    outcome = cmlray.await_workers(workers, timeout_seconds=DRAIN_TIMEOUT_S)
    if outcome["failures"] or len(outcome["workers"]) != n:
        raise RuntimeError(f"cmlray workers failed: {outcome['failures']}")
    file.settle()
    return t0, max(common.iso_to_unix(w["finished_at"]) for w in outcome["workers"])


def child_cmlray() -> Json:
    from rich.console import Console

    import cmlray

    file = ArrivalFile()
    result: Json = {}
    console = Console(file=cast("IO[str]", file), force_terminal=False, width=200)
    with common.timer(result, "init_s"):
        cmlray.init(num_cpus=NUM_CPUS, console=console)
    try:
        _cmlray_round(file, "print('warm')", 1)
        result["throughput"] = {}
        for kind, per_write in FLOODS.items():
            tag = "os.environ['CDSW_ENGINE_ID']"  # the worker's id, 16 characters
            call = f"import os; flood({tag}, {LINES}, {PAYLOAD!r}, {per_write})"
            t0, done = _cmlray_round(file, worker_code(flood, call), WORKERS)
            result["throughput"][kind] = analyse_flood(file.lines(), t0, done)
        _cmlray_round(file, worker_code(paced, f"paced({LATENCY_RATE}, {LATENCY_LINES})"), 1)
        result["latency"] = analyse_latency(file.lines())
    finally:
        with common.timer(result, "shutdown_s"):
            cmlray.shutdown()
    return result


def _ray_round(
    file: ArrivalFile, printer: Any, call: Callable[[Any, int], Any], n: int
) -> tuple[float, list[Any]]:
    """Create ``n`` actors, run ``call(actor, k)`` on each, wait for their output.

    Returns the launch time and the calls' results.
    """
    import ray

    file.reset()
    t0 = time.time()
    actors = [printer.remote() for _ in range(n)]
    returned = ray.get([call(actor, k) for k, actor in enumerate(actors)], timeout=DRAIN_TIMEOUT_S)
    file.settle()
    for actor in actors:
        ray.kill(actor)
    return t0, returned


def child_ray() -> Json:
    os.environ["RAY_DEDUP_LOGS"] = "0"
    os.environ["RAY_COLOR_PREFIX"] = "0"
    temp_dir = common.enable_token_auth()  # before Ray is imported: it caches its config
    import ray

    result: Json = {}
    with common.timer(result, "init_s"):
        common.ray_init(temp_dir, NUM_CPUS, log_to_driver=True)
    file, stdout = ArrivalFile(), sys.stdout
    sys.stdout = file  # where Ray prints forwarded lines (looked up at each print)
    try:
        memory = int(WORKER_MEMORY_GIB * 2**30)
        printer = ray.remote(num_cpus=WORKER_CPU, memory=memory)(RawPrinter)
        _ray_round(file, printer, lambda actor, _: actor.ready.remote(), 1)
        result["throughput"] = {}
        for kind, per_write in FLOODS.items():

            def call(actor: Any, k: int, per_write: int = per_write) -> Any:
                return actor.flood.remote(f"raw-worker-{k:05d}", LINES, PAYLOAD, per_write)

            t0, done = _ray_round(file, printer, call, WORKERS)
            result["throughput"][kind] = analyse_flood(file.lines(), t0, max(done))
        _ray_round(file, printer, lambda a, _: a.paced.remote(LATENCY_RATE, LATENCY_LINES), 1)
        result["latency"] = analyse_latency(file.lines())
    finally:
        sys.stdout = stdout
        common.ray_shutdown(result, "shutdown_s", temp_dir)
    return result


# --------------------------------------------------------------------------
# Parent: the children (sides alternating), the summary and its table.
# --------------------------------------------------------------------------


def measure(rounds: int, results: dict[str, list[Json]]) -> None:
    """Run ``rounds`` children per side, taking turns going first."""
    for index in range(rounds):
        for side in common.alternating(index, SIDES):
            result = common.spawn_child(__file__, side)
            results[side].append(result)
            brief = "; ".join(
                f"{kind} {f['lines_per_s']:,.0f} lines/s, lost {f['lost']}, "
                f"fragments {f['fragments']}"
                for kind, f in result["throughput"].items()
            )
            common.progress(f"round {index + 1}/{rounds} {side}: {brief}")


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


FLOOD_MEDIANS = (
    "lines_per_s",
    "streaming_lines_per_s",
    "elapsed_s",
    "first_line_s",
    "programs_done_s",
    "lag_s",
)
FLOOD_TOTALS = ("lost", "duplicated", "fragments", "order_violations", "other")


def _flood_summary(floods: Sequence[Json]) -> Json:
    """Medians of the timings, totals of the defects, over one side's floods of one kind."""
    summary: Json = {key: statistics.median(f[key] for f in floods) for key in FLOOD_MEDIANS}
    summary |= {key: sum(f[key] for f in floods) for key in FLOOD_TOTALS}
    return summary


def _latency_summary(children: Sequence[Json]) -> Json:
    """Percentiles of every latency sample of one side, pooled; lines lost."""
    latencies = [s for c in children for s in c["latency"]["latencies_s"]]
    summary: Json = {"lost": sum(c["latency"]["lost"] for c in children)}
    if latencies:
        summary |= {
            "p50_s": percentile(latencies, 0.5),
            "p99_s": percentile(latencies, 0.99),
            "max_s": max(latencies),
        }
    return summary


def _ratios(results: dict[str, list[Json]], sides: Json, kind: str, key: str) -> Json:
    """cmlray / raw Ray for ``key`` of ``kind`` floods: of the medians, and paired by round."""
    cml, raw = sides["cmlray"][kind][key], sides["ray"][kind][key]
    paired = [
        c["throughput"][kind][key] / r["throughput"][kind][key]
        for c, r in zip(results["cmlray"], results["ray"], strict=False)
        if r["throughput"][kind][key]
    ]
    return {"of_medians": cml / raw if raw else None, "paired": common.median_or_none(paired)}


def summarize(results: dict[str, list[Json]]) -> Json:
    """Per side and flood kind: medians, defect totals; pooled latency; ratios."""
    sides: Json = {
        side: {
            kind: _flood_summary([c["throughput"][kind] for c in results[side]]) for kind in FLOODS
        }
        for side in SIDES
    }
    ratios = {
        kind: {
            key: _ratios(results, sides, kind, key)
            for key in ("lines_per_s", "streaming_lines_per_s")
        }
        for kind in FLOODS
    }
    return {
        "sides": sides,
        "latency": {side: _latency_summary(results[side]) for side in SIDES},
        "ratios": ratios,
        "rounds": len(results["cmlray"]),
        "goals": {"throughput_ratio": THROUGHPUT_GOAL, "latency_p99_s": P99_GOAL_S},
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f} ms"


def _zero_goal(value: int) -> str:
    return f"0 {common.verdict(value == 0)}"


_TIMINGS = (
    ("elapsed_s", "launch -> last line shown"),
    ("first_line_s", "launch -> first line shown"),
    ("programs_done_s", "launch -> last program done writing"),
    ("lag_s", "last program done -> last line shown"),
)
_DEFECTS = (
    ("lost", "lines lost"),
    ("duplicated", "lines duplicated"),
    ("fragments", "fragments"),
    ("order_violations", "order violations"),
)


def _ratio_text(ratio: Json) -> str:
    if ratio["of_medians"] is None or ratio["paired"] is None:
        return "-"
    return f"{ratio['of_medians']:.2f} (paired {ratio['paired']:.2f})"


def _flood_rows(table: Any, summary: Json, kind: str) -> None:
    """The rows of one flood kind: throughput (goal on line by line), timings, defects."""
    cml, raw = summary["sides"]["cmlray"][kind], summary["sides"]["ray"][kind]
    ratios = summary["ratios"][kind]
    paired = ratios["lines_per_s"]["paired"]
    goal = ""
    if kind == "line":
        met = paired is not None and paired >= THROUGHPUT_GOAL
        goal = f">= {THROUGHPUT_GOAL:g}x {common.verdict(met)}"
    label = "line by line" if kind == "line" else f"bulk ({FLOODS[kind]:,} lines a write)"
    table.add_section()
    table.add_row(
        f"{label}: launch -> last line, lines/s",
        f"{cml['lines_per_s']:,.0f}",
        f"{raw['lines_per_s']:,.0f}",
        _ratio_text(ratios["lines_per_s"]),
        goal,
    )
    table.add_row(
        "  first -> last line shown, lines/s",
        f"{cml['streaming_lines_per_s']:,.0f}",
        f"{raw['streaming_lines_per_s']:,.0f}",
        _ratio_text(ratios["streaming_lines_per_s"]),
        "",
    )
    for key, text in _TIMINGS:
        table.add_row(f"  {text}", f"{cml[key]:.2f} s", f"{raw[key]:.2f} s", "", "")
    for key, text in _DEFECTS:
        table.add_row(f"  {text}", str(cml[key]), str(raw[key]), "", _zero_goal(cml[key]))
    table.add_row(
        "  other lines (Ray's, cmlray's own)", str(cml["other"]), str(raw["other"]), "", ""
    )


def _latency_rows(table: Any, summary: Json) -> None:
    cml, raw = summary["latency"]["cmlray"], summary["latency"]["ray"]
    table.add_section()
    rate = f"{LATENCY_RATE:,.0f} lines/s"
    for key, text in (("p50_s", "p50"), ("p99_s", "p99"), ("max_s", "max")):
        goal = ""
        if key == "p99_s":
            met = cml.get(key) is not None and cml[key] <= P99_GOAL_S
            goal = f"<= {P99_GOAL_S * 1000:.0f} ms {common.verdict(met)}"
        table.add_row(f"latency at {rate}, {text}", _ms(cml.get(key)), _ms(raw.get(key)), "", goal)
    table.add_row(
        "  latency lines lost", str(cml["lost"]), str(raw["lost"]), "", _zero_goal(cml["lost"])
    )


def print_table(summary: Json) -> None:
    from rich.table import Table

    table = Table(
        title=f"Output relay: cmlray vs raw Ray log forwarding ({WORKERS} workers x {LINES:,} "
        f"lines; {summary['rounds']} run(s) a side: medians, defects totalled)"
    )
    for column in ("measure", "cmlray", "raw Ray", "cmlray / raw", "goal (cmlray)"):
        table.add_column(
            column, justify="left" if column in ("measure", "goal (cmlray)") else "right"
        )
    for kind in FLOODS:
        _flood_rows(table, summary, kind)
    _latency_rows(table, summary)
    common.table_console(130).print(table)


def run(args: argparse.Namespace) -> int:
    """The parent: every child, sides alternating, then the table and the JSON."""
    rounds = args.rounds or (1 if args.quick else 2)
    results: dict[str, list[Json]] = {side: [] for side in SIDES}

    def report() -> Json:
        summary = summarize(results)
        print_table(summary)
        return summary

    plan = {"rounds": rounds, "workers": WORKERS, "lines": LINES, "payload_bytes": len(PAYLOAD)}
    plan |= {"latency_rate": LATENCY_RATE, "latency_lines": LATENCY_LINES, "num_cpus": NUM_CPUS}
    return common.run_parent(
        lambda: measure(rounds, results),
        report,
        plan=plan,
        children=results,
        results_path=RESULTS_PATH,
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None, help="children per side (default 2)")
    parser.add_argument("--quick", action="store_true", help="one child per side (CI smoke run)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return common.checked_args(parser, argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    modes: dict[str, Callable[[], Json]] = {"cmlray": child_cmlray, "ray": child_ray}
    return common.child_or_parent(args.child, modes, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
