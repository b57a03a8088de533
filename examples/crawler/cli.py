"""``crawl.py``'s command line: parse it, start the demo site if no seed is given, crawl."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from rich.console import Console

import cmlray
from crawler.config import USER_AGENT, CrawlConfig, FetchConfig
from crawler.demo_site import DemoServer, generate
from crawler.engine import Crawler, WorkersLostError
from crawler.scheduler import BATCHES_PER_WORKER
from crawler.store import Store
from crawler.urls import normalize

DEMO_PORT_KEY = "demo_port"


def positive(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    """The command line (see examples/crawler/README.md)."""
    p = argparse.ArgumentParser(
        prog="crawl.py",
        description="A polite distributed crawler on cmlray workers. With no SEED_URL it "
        "crawls a generated demo site served on 127.0.0.1.",
    )
    p.add_argument("seeds", nargs="*", metavar="SEED_URL", help="where to start")
    p.add_argument("--db", default="crawl.db", help="SQLite file (resumed if it exists)")
    p.add_argument("--workers", type=positive, default=2, help="cmlray workers fetching")
    p.add_argument("--concurrency", type=positive, default=16, help="requests at once per worker")
    p.add_argument(
        "--per-host", type=positive, default=None, help="requests at once per host, all workers "
        "together, queued batches included (default 8; none for the demo site)"
    )  # fmt: skip
    p.add_argument(
        "--delay", type=float, default=None, help="seconds between requests to one host "
        "(default 0.5; 0 for the demo site; a robots.txt Crawl-delay can only raise it)"
    )  # fmt: skip
    p.add_argument("--max-pages", type=positive, default=1000, help="pages in the database at most")
    p.add_argument("--max-depth", type=int, default=10, help="link hops from a seed at most")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    p.add_argument("--retries", type=int, default=2, help="retries after timeouts and 5xx")
    p.add_argument("--backoff", type=float, default=0.5, help="first retry's wait; doubles")
    p.add_argument("--max-bytes", type=int, default=2_000_000, help="body size read at most")
    p.add_argument("--allow-host", action="append", default=[], help="another host:port to crawl")
    p.add_argument("--user-agent", default=USER_AGENT)
    p.add_argument("--worker-cpu", type=float, default=1.0, help="cores each worker holds")
    p.add_argument("--demo-pages", type=int, default=300, help="pages of the demo site")
    p.add_argument("--demo-latency", type=float, default=0.02, help="demo site's response delay")
    p.add_argument("--stats-json", help="also write the run's numbers to this JSON file")
    return p


def config_from(args: argparse.Namespace, seeds: Sequence[str], demo: bool) -> CrawlConfig:
    """The crawl's settings from the parsed command line."""
    delay = args.delay if args.delay is not None else (0.0 if demo else 0.5)
    unlimited = BATCHES_PER_WORKER * args.workers * args.concurrency  # all that can be out
    per_host = args.per_host or (unlimited if demo else 8)
    fetch = FetchConfig(
        user_agent=args.user_agent,
        timeout=args.timeout,
        max_bytes=args.max_bytes,
        concurrency=args.concurrency,
        per_host=per_host,
        delay=delay,
    )
    return CrawlConfig(
        seeds=tuple(seeds),
        db=args.db,
        workers=args.workers,
        max_pages=args.max_pages,
        max_depth=args.max_depth,
        retries=args.retries,
        backoff=args.backoff,
        allow_hosts=tuple(args.allow_host),
        worker_cpu=args.worker_cpu,
        fetch=fetch,
    )


def _demo_port(db: str) -> int:
    """The port an earlier run's demo site had (so its URLs match on resume), else 0."""
    if not Path(db).exists():
        return 0
    store = Store(db)
    try:
        return int(store.get_meta(DEMO_PORT_KEY) or 0)
    finally:
        store.close()


@contextlib.contextmanager
def demo_site(args: argparse.Namespace, console: Console) -> Iterator[list[str]]:
    """The seeds: the given ones, or the URL of a demo site served meanwhile."""
    if args.seeds:
        yield list(args.seeds)
        return
    site = generate(args.demo_pages)
    port = _demo_port(args.db)
    try:
        server = DemoServer(site, latency=args.demo_latency, port=port).start()
    except OSError:  # the earlier port is taken: a fresh crawl of a new demo site
        console.log(f"port {port} is taken: serving the demo site on another one")
        server = DemoServer(site, latency=args.demo_latency).start()
    try:
        store = Store(args.db)
        store.set_meta(DEMO_PORT_KEY, server.url.rsplit(":", 1)[1].strip("/"))
        store.close()
        console.log(f"demo site: {len(site.pages)} pages at {server.url}")
        yield [server.url]
    finally:
        server.stop()


def _start_session(config: CrawlConfig, console: Console) -> float:
    """Start cmlray's session (its own Ray head unless RAY_ADDRESS says otherwise)."""
    started = time.monotonic()
    with console.status("starting the cmlray session"):
        if os.environ.get("RAY_ADDRESS"):
            cmlray.init(console=console)
        else:
            cpus = max(os.cpu_count() or 1, math.ceil(config.workers * config.worker_cpu))
            cmlray.init(num_cpus=cpus, console=console)
    return time.monotonic() - started


def _write_stats(path: str, crawler: Crawler, session_s: float, total_s: float) -> None:
    snap = crawler.snapshot()
    stats = {
        "pages_stored": snap.stored_run,
        "pages_in_db": snap.stored_total,
        "failed": snap.failed,
        "retried": snap.retried,
        "session_start_s": round(session_s, 3),
        "crawl_s": round(snap.crawl_s, 3),
        "crawl_pages_per_s": round(snap.rate, 2),
        "total_s": round(total_s, 3),
    }
    Path(path).write_text(json.dumps(stats, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one crawl from the command line; 0 when it ended normally."""
    started = time.monotonic()
    cli = parser()
    args = cli.parse_args(argv)
    bad = [seed for seed in args.seeds if normalize(seed) is None]
    if bad:
        cli.error(f"not http(s) URLs: {', '.join(bad)}")
    console = Console()
    with demo_site(args, console) as seeds:
        config = config_from(args, seeds, demo=not args.seeds)
        session_s = _start_session(config, console)
        crawler = Crawler(config, console=console)
        signal.signal(signal.SIGINT, crawler.on_sigint)
        try:
            crawler.run()
            console.print(crawler.summary())
            if args.stats_json:
                _write_stats(args.stats_json, crawler, session_s, time.monotonic() - started)
        except WorkersLostError as exc:
            console.print(f"[red]crawl aborted:[/] {exc}; run again to resume")
            return 1
        except KeyboardInterrupt:
            console.print("[red]crawl aborted[/]; run again to resume")
            return 130
        finally:
            crawler.close()
            cmlray.shutdown()
    return 0
