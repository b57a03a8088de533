"""Benchmark: the crawler example (2 workers, 1 worker) against Scrapy, in one run.

The site: the example's generated demo site (``--pages`` pages plus sections,
broken links, a redirect, a robots.txt rule, binaries), served by a real
threaded HTTP server in a process of its own on 127.0.0.1, each response
delayed by ``--latency`` seconds as a distant server's would be. Every crawl
runs as a fresh process, timed from its start to its exit, as a user waits
for it (for the example: Python start, cmlray session start with its own
Ray head, workers' launch, the crawl, the session's end):

(a) ``examples/crawler/crawl.py`` with 2 workers of ``--concurrency`` each;
(b) the same with 1 worker;
(c) Scrapy (``benchmarks/scrapy_crawl.py``) with CONCURRENT_REQUESTS =
    ``--concurrency``, the setting each of the example's workers has;
(d) Scrapy with CONCURRENT_REQUESTS = 2 x ``--concurrency``, the total the
    2 workers of (a) have: a fairer match for (a), reported alongside.

All four obey robots.txt, send the same User-Agent, use the same per-host
limit (``--per-host``), no delay, the same URL normalisation and HTML
parser, and write the same ``pages`` and ``links`` tables to SQLite; their
stored URL sets (with statuses) are checked to be identical. Two rates per
run: end to end (stored pages / wall time of the process) and the crawl
phase (stored pages / time from workers running to the queue drained for
the example; Scrapy's own elapsed_time_seconds for Scrapy).

Goals: (a) end to end >= 5x (c); (a)'s crawl phase >= 1.7x (b)'s. Results:
a Rich table on stdout, JSON in benchmarks/results/crawler.json.
Run: ``python benchmarks/crawl_vs_scrapy.py [--pages 500 --latency 0.05 --rounds 1]``.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from _common import BENCHMARKS, REPO, RESULTS_DIR, Json, installed_bytecode, machine, write_json
from rich.console import Console
from rich.table import Table

EXAMPLES = REPO / "examples"
CRAWL = EXAMPLES / "crawler" / "crawl.py"
SCRAPY = BENCHMARKS / "scrapy_crawl.py"
RESULTS_PATH = RESULTS_DIR / "crawler.json"


@contextmanager
def demo_site(pages: int, latency: float) -> Iterator[str]:
    """Serve the demo site in a child process; yields its URL; stops it by pid."""
    command = [sys.executable, "-m", "crawler.demo_site", "--pages", str(pages)]
    server = subprocess.Popen(
        [*command, "--latency", str(latency)], cwd=EXAMPLES, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        yield server.stdout.readline().strip()
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _timed(command: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{command[1]} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return wall, done


def common_flags(args: argparse.Namespace) -> list[str]:
    return ["--per-host", str(args.per_host), "--delay", "0", "--max-depth", "1000"]


def run_example(url: str, workers: int, args: argparse.Namespace, tmp: Path) -> Json:
    """One crawl by the example, as a fresh process; its numbers."""
    db, stats = tmp / f"example-{workers}w.db", tmp / f"example-{workers}w.json"
    command = [sys.executable, str(CRAWL), url, "--db", str(db), "--workers", str(workers)]
    command += ["--concurrency", str(args.concurrency), "--max-pages", "1000000"]
    wall, _ = _timed([*command, *common_flags(args), "--stats-json", str(stats)], tmp)
    numbers = json.loads(stats.read_text())
    return {
        "db": str(db),
        "wall_s": wall,
        "pages": numbers["pages_stored"],
        "session_start_s": numbers["session_start_s"],
        "crawl_s": numbers["crawl_s"],
    }


def run_scrapy(url: str, concurrency: int, args: argparse.Namespace, tmp: Path) -> Json:
    """One crawl by Scrapy, as a fresh process; its numbers."""
    db, stats = tmp / f"scrapy-{concurrency}.db", tmp / f"scrapy-{concurrency}.json"
    command = [sys.executable, str(SCRAPY), url, "--db", str(db)]
    command += ["--concurrency", str(concurrency), *common_flags(args)]
    wall, _ = _timed([*command, "--stats-json", str(stats)], tmp)
    with closing(sqlite3.connect(db)) as conn:
        pages = conn.execute("SELECT count(*) FROM pages").fetchone()[0]
    return {"db": str(db), "wall_s": wall, "pages": pages, "session_start_s": None,
            "crawl_s": json.loads(stats.read_text())["crawl_s"]}  # fmt: skip


def stored(db: str) -> set[tuple[str, int | None]]:
    """(url, status) of every stored page."""
    with closing(sqlite3.connect(db)) as conn:
        return set(conn.execute("SELECT url, status FROM pages"))


def one_round(url: str, args: argparse.Namespace, tmp: Path, turn: int) -> dict[str, Json]:
    """The four crawls, in an order rotated by ``turn`` (the machine is shared and noisy)."""
    runs = {
        "example, 2 workers": lambda: run_example(url, 2, args, tmp),
        "example, 1 worker": lambda: run_example(url, 1, args, tmp),
        f"scrapy, {args.concurrency} concurrent": lambda: run_scrapy(
            url, args.concurrency, args, tmp
        ),
        f"scrapy, {2 * args.concurrency} concurrent": lambda: run_scrapy(
            url, 2 * args.concurrency, args, tmp
        ),
    }
    names = list(runs)
    order = names[turn % len(names) :] + names[: turn % len(names)]
    results = {name: runs[name]() for name in order}
    return {name: results[name] for name in names}


def summarise(rounds: list[dict[str, Json]]) -> dict[str, Json]:
    """Medians over rounds, and the two rates."""
    out: dict[str, Json] = {}
    for name in rounds[0]:
        samples = [r[name] for r in rounds]
        pages = samples[0]["pages"]
        wall = statistics.median(s["wall_s"] for s in samples)
        crawl = statistics.median(s["crawl_s"] for s in samples)
        starts = [s["session_start_s"] for s in samples if s["session_start_s"] is not None]
        start = statistics.median(starts) if starts else None
        out[name] = {
            "pages": pages,
            "wall_s": round(wall, 3),
            "pages_per_s_end_to_end": round(pages / wall, 2),
            "session_start_s": None if start is None else round(start, 3),
            "pages_per_s_end_to_end_without_session_start": round(pages / (wall - (start or 0)), 2),
            "crawl_s": round(crawl, 3),
            "crawl_pages_per_s": round(pages / crawl, 2),
            "samples": [{k: v for k, v in s.items() if k != "db"} for s in samples],
        }
    return out


def goals(summary: dict[str, Json], concurrency: int) -> Json:
    """The two goals, with the measured ratios."""
    two, one = summary["example, 2 workers"], summary["example, 1 worker"]
    scrapy = summary[f"scrapy, {concurrency} concurrent"]
    scrapy_total = summary[f"scrapy, {2 * concurrency} concurrent"]
    e2e = two["pages_per_s_end_to_end"] / scrapy["pages_per_s_end_to_end"]
    scale = two["crawl_pages_per_s"] / one["crawl_pages_per_s"]
    return {
        "end_to_end_vs_scrapy": {"goal": 5.0, "ratio": round(e2e, 3), "met": e2e >= 5.0},
        "end_to_end_vs_scrapy_same_total_concurrency": round(
            two["pages_per_s_end_to_end"] / scrapy_total["pages_per_s_end_to_end"], 3
        ),
        "crawl_phase_vs_scrapy": round(two["crawl_pages_per_s"] / scrapy["crawl_pages_per_s"], 3),
        "crawl_2_vs_1_worker": {"goal": 1.7, "ratio": round(scale, 3), "met": scale >= 1.7},
    }


def table(summary: dict[str, Json], verdict: Json, identical: bool) -> Table:
    t = Table(title="crawler benchmark: the demo site, end to end and crawl phase")
    for column in ("run", "pages", "wall s", "pages/s e2e", "session start s", "crawl s",
                   "crawl pages/s"):  # fmt: skip
        t.add_column(column, justify="left" if column == "run" else "right")
    for name, row in summary.items():
        start = row["session_start_s"]
        t.add_row(name, str(row["pages"]), f"{row['wall_s']:.2f}",
                  f"{row['pages_per_s_end_to_end']:.1f}", "-" if start is None else f"{start:.2f}",
                  f"{row['crawl_s']:.2f}", f"{row['crawl_pages_per_s']:.1f}")  # fmt: skip
    e2e, scale = verdict["end_to_end_vs_scrapy"], verdict["crawl_2_vs_1_worker"]
    t.caption = (
        f"stored URL sets identical: {identical} · 2 workers vs Scrapy end to end: "
        f"{e2e['ratio']:.2f}x (goal 5x, {'met' if e2e['met'] else 'NOT met'}) · crawl phase "
        f"2 vs 1 worker: {scale['ratio']:.2f}x (goal 1.7x, {'met' if scale['met'] else 'NOT met'})"
    )
    return t


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pages", type=int, default=500)
    p.add_argument("--latency", type=float, default=0.05)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--per-host", type=int, default=64)
    p.add_argument("--rounds", type=int, default=1)
    args = p.parse_args()
    bytecode = installed_bytecode()
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="crawler-bench-") as tmp,
        demo_site(args.pages, args.latency) as url,
    ):
        rounds = [one_round(url, args, Path(tmp), turn) for turn in range(args.rounds)]
        sets = [stored(run["db"]) for r in rounds for run in r.values()]
    identical = all(s == sets[0] for s in sets)
    summary = summarise(rounds)
    verdict = goals(summary, args.concurrency)
    Console(width=max(120, Console().width)).print(table(summary, verdict, identical))
    report = {
        "plan": vars(args),
        "machine": machine(),
        "bytecode": bytecode,
        "wall_s": round(time.perf_counter() - started, 1),
        "stored_url_sets_identical": identical,
        "stored_pages": len(sets[0]),
        "runs": summary,
        "goals": verdict,
    }
    write_json(RESULTS_PATH, report)
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
