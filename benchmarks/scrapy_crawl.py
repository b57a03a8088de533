"""The benchmark's Scrapy side: the crawler example's rules, as a Scrapy spider.

Same robots.txt handling (Scrapy's RobotsTxtMiddleware with the standard
library's parser, as the example), same User-Agent, same URL normalisation
and HTML parser (the example's ``crawler.urls`` and ``crawler.parse``), same
scope, redirects recorded and followed as new requests (not inside the
downloader), retries for 5xx and network errors, and the same storage: an
item pipeline writing the example's ``pages``/``links``/``skipped`` tables in
SQLite (WAL, one transaction per batch of items). Run by
``benchmarks/crawl_vs_scrapy.py`` in a process of its own:

    python benchmarks/scrapy_crawl.py URL --db out.db --concurrency 8 \
        --per-host 64 --stats-json stats.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# The example's package on the path (its crawler package is Scrapy's spider's parser).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

import scrapy
from crawler.config import HTML_TYPES, USER_AGENT
from crawler.parse import parse_html
from crawler.records import failure, now_iso
from crawler.store import Store, Writes
from crawler.urls import host_of, normalize
from scrapy.crawler import CrawlerProcess
from scrapy.exceptions import IgnoreRequest
from scrapy.http import Response
from twisted.python.failure import Failure

COMMIT_EVERY = 16


def record_of(response: Response) -> dict[str, Any]:
    """The example's page record for a Scrapy response (title and links parsed from HTML)."""
    content_type = response.headers.get("Content-Type", b"").decode("latin-1")
    media, _, params = content_type.partition(";")
    charset = params.split("charset=", 1)[1].strip() if "charset=" in params else None
    record = failure(response.url, "", retryable=False)
    record.update(
        status=response.status,
        content_type=content_type or None,
        size=len(response.body),
        content_hash=hashlib.sha256(response.body).hexdigest(),
        error=f"HTTP {response.status}" if response.status >= 400 else None,
    )
    location = response.headers.get("Location")
    if 300 <= response.status < 400 and location:
        record["location"] = normalize(location.decode("latin-1"), response.url)
        record["final_url"] = record["location"] or response.url
    elif 200 <= response.status < 300 and media.strip().lower() in HTML_TYPES:
        record["title"], record["links"] = parse_html(response.body, response.url, charset)
    return record


class ExampleSpider(scrapy.Spider):
    """Crawls from the seeds within their hosts, like the example's session does."""

    name = "example"

    def __init__(self, seeds: list[str], max_depth: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seeds = [url for url in map(normalize, seeds) if url]
        self.allowed = {host_of(url) for url in self.seeds}
        self.max_depth = max_depth

    def request(self, url: str, depth: int) -> scrapy.Request:
        return scrapy.Request(url, meta={"d": depth}, errback=self.failed)

    async def start(self) -> Any:
        for url in self.seeds:
            yield self.request(url, 0)

    def parse(self, response: Response) -> Iterator[Any]:
        depth = response.meta["d"]
        record = record_of(response)
        yield {**record, "depth": depth, "attempts": response.meta.get("retry_times", 0) + 1}
        for link in record["links"]:
            if host_of(link) in self.allowed and depth + 1 <= self.max_depth:
                yield self.request(link, depth + 1)
        if record["location"] and host_of(record["location"]) in self.allowed:
            yield self.request(record["location"], depth)

    def failed(self, reason: Failure) -> Iterator[Any]:
        request = reason.request  # type: ignore[attr-defined]
        if reason.check(IgnoreRequest):  # robots.txt said no
            yield {"skipped": request.url, "depth": request.meta["d"]}
            return
        record = failure(request.url, f"{reason.type.__name__}: {reason.value}", False)
        attempts = request.meta.get("retry_times", 0) + 1
        yield {**record, "depth": request.meta["d"], "attempts": attempts}


class SqlitePipeline:
    """Writes items to the example's tables, COMMIT_EVERY items per transaction."""

    def __init__(self, db: str) -> None:
        self.store = Store(db)
        self.writes = Writes()
        self.pending = 0

    @classmethod
    def from_crawler(cls, crawler: Any) -> SqlitePipeline:
        return cls(crawler.settings["EXAMPLE_DB"])

    def process_item(self, item: dict[str, Any]) -> dict[str, Any]:
        if "skipped" in item:
            self.writes.skipped.append((item["skipped"], "disallowed by robots.txt", item["depth"]))
        else:
            self.writes.pages.append(item)
            self.writes.links.extend((item["url"], link) for link in item["links"])
        self.pending += 1
        if self.pending >= COMMIT_EVERY:
            self.flush()
        return item

    def flush(self) -> None:
        self.store.write(self.writes)
        self.writes, self.pending = Writes(), 0

    def close_spider(self) -> None:
        self.flush()
        self.store.close()


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """Scrapy settings matching the example's command line."""
    return {
        "USER_AGENT": USER_AGENT,
        "ROBOTSTXT_OBEY": True,
        "ROBOTSTXT_PARSER": "scrapy.robotstxt.PythonRobotParser",
        "CONCURRENT_REQUESTS": args.concurrency,
        "CONCURRENT_REQUESTS_PER_DOMAIN": args.per_host,
        "DOWNLOAD_DELAY": args.delay,
        "DOWNLOAD_DELAY_JITTER": 0,
        "DOWNLOAD_TIMEOUT": args.timeout,
        "DOWNLOAD_MAXSIZE": args.max_bytes,
        "REDIRECT_ENABLED": False,  # 3xx recorded and followed as new requests, as the example
        "HTTPERROR_ALLOW_ALL": True,
        "RETRY_ENABLED": True,
        "RETRY_TIMES": args.retries,
        "DEPTH_LIMIT": 0,  # the spider applies the example's depth rule itself
        "COOKIES_ENABLED": False,
        "TELNETCONSOLE_ENABLED": False,
        "LOG_LEVEL": "WARNING",
        "ITEM_PIPELINES": {f"{__name__}.SqlitePipeline": 100},
        "EXAMPLE_DB": args.db,
    }


def main() -> None:
    """Crawl, then write Scrapy's own timing of the crawl (JSON) if asked."""
    p = argparse.ArgumentParser(description="The example's crawl, done by Scrapy.")
    p.add_argument("seeds", nargs="+")
    p.add_argument("--db", required=True)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--per-host", type=int, default=8)
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--max-depth", type=int, default=10)
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--retries", type=int, default=2)
    p.add_argument("--max-bytes", type=int, default=2_000_000)
    p.add_argument("--stats-json")
    args = p.parse_args()
    process = CrawlerProcess(settings(args))
    crawler = process.create_crawler(ExampleSpider)
    started = time.monotonic()
    process.crawl(crawler, seeds=args.seeds, max_depth=args.max_depth)
    process.start()
    stats = crawler.stats.get_stats() if crawler.stats else {}
    if args.stats_json:
        out = {
            "crawl_s": float(stats.get("elapsed_time_seconds", time.monotonic() - started)),
            "items": int(stats.get("item_scraped_count", 0)),
            "finished_at": now_iso(),
        }
        Path(args.stats_json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
