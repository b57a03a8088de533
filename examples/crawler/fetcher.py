"""The worker's side: fetch a batch of URLs concurrently with aiohttp, parse HTML.

``cmlray.worker.serve`` hands the worker one queue item at a time; each item
is a *batch* of URLs (a list of task dicts), which :meth:`Fetcher.fetch_batch`
fetches concurrently on one persistent event loop and connection pool. The
result is one record (a plain dict) per URL; nothing a server does (hang,
reset, send garbage or gigabytes) raises out of it: every outcome is a
record, and the session decides about retries.

Redirects are not followed here: a 3xx is recorded with its normalised
``location``, and the session schedules that URL like any other (scope,
robots.txt, de-duplication and redirect loops are handled in one place).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Mapping
from typing import Any

import aiohttp

from crawler.config import HTML_TYPES, FetchConfig
from crawler.parse import parse_html
from crawler.records import Record, failure
from crawler.urls import host_of, normalize

_CHUNK = 1 << 16


async def read_capped(content: aiohttp.StreamReader, max_bytes: int) -> tuple[bytes, bool]:
    """(body, complete): reads at most ``max_bytes``; complete is False when there was more."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in content.iter_chunked(_CHUNK):
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            return b"".join(chunks)[:max_bytes], False
    return b"".join(chunks), True


def _media_type(content_type: str) -> tuple[str, str | None]:
    """(``text/html``, charset or None) from a Content-Type header."""
    media, _, params = content_type.partition(";")
    charset = None
    for param in params.split(";"):
        key, _, value = param.strip().partition("=")
        if key.lower() == "charset":
            charset = value.strip("\"' ") or None
    return media.strip().lower(), charset


def describe(
    url: str, response: aiohttp.ClientResponse, body: bytes, complete: bool, max_bytes: int
) -> Record:
    """The record of an HTTP response: parsed when it is a complete 2xx HTML page."""
    content_type = response.headers.get("Content-Type", "")
    media, charset = _media_type(content_type)
    record = failure(url, "", retryable=response.status >= 500)
    record.update(
        status=response.status,
        content_type=content_type or None,
        size=len(body),
        content_hash=hashlib.sha256(body).hexdigest(),
        error=f"HTTP {response.status}" if response.status >= 400 else None,
    )
    if 300 <= response.status < 400 and "Location" in response.headers:
        record["location"] = normalize(response.headers["Location"], url)
        record["final_url"] = record["location"] or url
    if not complete:
        record["error"] = f"body larger than {max_bytes} bytes: truncated, not parsed"
    elif 200 <= response.status < 300 and media in HTML_TYPES:
        _parse_into(record, body, charset)
    return record


def _parse_into(record: Record, body: bytes, charset: str | None) -> None:
    """Title and links into ``record``; a parser failure is recorded, not raised."""
    try:
        record["title"], record["links"] = parse_html(body, record["url"], charset)
    except Exception as exc:  # the page is still stored, with its status
        record["error"] = f"not parsed: {type(exc).__name__}: {exc}"


class Fetcher:
    """One worker's HTTP client: a connection pool, per-host limits and spacing."""

    def __init__(self, config: FetchConfig, http: aiohttp.ClientSession) -> None:
        self.config = config
        self.http = http
        self._host_slots: dict[str, asyncio.Semaphore] = {}
        self._next_start: dict[str, float] = {}

    @classmethod
    async def open(cls, config: FetchConfig) -> Fetcher:
        """A fetcher with its own aiohttp session (call inside the event loop that uses it)."""
        connector = aiohttp.TCPConnector(limit=config.concurrency, limit_per_host=config.per_host)
        http = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=config.timeout),
            headers={"User-Agent": config.user_agent},
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        return cls(config, http)

    async def close(self) -> None:
        await self.http.close()

    async def fetch_batch(self, tasks: list[Mapping[str, Any]]) -> list[Record]:
        """Fetch every task of a batch at once; one record per task, in order."""
        return list(await asyncio.gather(*(self.fetch(task) for task in tasks)))

    async def _wait_turn(self, host: str, not_before: float) -> None:
        """Sleep until the slot the session gave, and ``delay`` after this worker's last start."""
        start = max(time.time(), not_before, self._next_start.get(host, 0.0))
        self._next_start[host] = start + self.config.delay
        await asyncio.sleep(max(0.0, start - time.time()))

    async def fetch(self, task: Mapping[str, Any]) -> Record:
        """Fetch one URL (``task["url"]``) no earlier than ``task["not_before"]``."""
        url = task["url"]
        host = host_of(url)
        slot = self._host_slots.setdefault(host, asyncio.Semaphore(self.config.per_host))
        async with slot:
            await self._wait_turn(host, float(task.get("not_before", 0.0)))
            started = time.monotonic()
            record = await self._get(url)
        record["elapsed_ms"] = round(1000 * (time.monotonic() - started), 1)
        return record

    async def _get(self, url: str) -> Record:
        try:
            async with self.http.get(url, allow_redirects=False) as response:
                body, complete = await read_capped(response.content, self.config.max_bytes)
                return describe(url, response, body, complete, self.config.max_bytes)
        except TimeoutError:
            return failure(url, f"timeout after {self.config.timeout:g} s", retryable=True)
        except ValueError as exc:  # aiohttp.InvalidURL and friends: retrying will not help
            return failure(url, f"{type(exc).__name__}: {exc}", retryable=False)
        except aiohttp.ClientError as exc:  # refused, reset, malformed response
            return failure(url, f"{type(exc).__name__}: {exc}", retryable=True)
        except Exception as exc:  # anything else is recorded: no page stops the crawl
            return failure(url, f"{type(exc).__name__}: {exc}", retryable=False)


def run_worker(queue_name: str, config: FetchConfig) -> int:
    """Serve the crawl queue until it is closed and drained; returns batches fetched."""
    import cmlray.worker

    loop = asyncio.new_event_loop()
    fetcher = loop.run_until_complete(Fetcher.open(config))
    try:
        return cmlray.worker.serve(
            queue_name, lambda tasks: loop.run_until_complete(fetcher.fetch_batch(tasks))
        )
    finally:
        loop.run_until_complete(fetcher.close())
        loop.close()
