"""The crawler's settings: what the session decides, and what it tells the workers."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

USER_AGENT = "cmlray-crawler/0.1 (+https://github.com/cmlray/cmlray/tree/main/examples/crawler)"
HTML_TYPES = ("text/html", "application/xhtml+xml")
QUEUE_ENV = "CRAWLER_QUEUE"  # a worker's environment: the queue it serves
FETCH_ENV = "CRAWLER_FETCH"  # ... and its FetchConfig, as JSON


@dataclass(frozen=True)
class FetchConfig:
    """What a worker needs to fetch politely (sent to it as JSON in its environment).

    Attributes:
        user_agent: the honest User-Agent every request carries.
        timeout: seconds one request may take, connect to last byte.
        max_bytes: bodies are read up to this size; larger ones are truncated
            and not parsed.
        concurrency: requests one worker runs at once.
        per_host: requests one worker runs at once against one host.
        delay: seconds between two request starts to one host (the session
            assigns each URL its slot; the worker also keeps the gap itself).
    """

    user_agent: str = USER_AGENT
    timeout: float = 10.0
    max_bytes: int = 2_000_000
    concurrency: int = 16
    per_host: int = 8
    delay: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class CrawlConfig:
    """One crawl, as the session runs it.

    Attributes:
        seeds: the start URLs.
        db: the SQLite file (created if missing; resumed if it holds a crawl).
        workers: how many cmlray workers fetch.
        max_pages: pages stored in the database at most (all runs together).
        max_depth: link hops from a seed at most (a redirect is not a hop).
        retries: retries after a timeout, a connection error or a 5xx.
        backoff: seconds before the first retry; doubled for each further one.
        max_redirects: redirect hops followed from one link.
        allow_hosts: hosts (``host[:port]``) besides the seeds' that may be crawled.
        worker_cpu: cores each worker holds.
        worker_memory: GiB each worker holds.
        fetch: what the workers are told.
    """

    seeds: tuple[str, ...]
    db: str
    workers: int = 2
    max_pages: int = 1000
    max_depth: int = 10
    retries: int = 2
    backoff: float = 0.5
    max_redirects: int = 5
    allow_hosts: tuple[str, ...] = ()
    worker_cpu: float = 1.0
    worker_memory: float = 0.5
    fetch: FetchConfig = field(default_factory=FetchConfig)
