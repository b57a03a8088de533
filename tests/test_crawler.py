"""The crawler example (examples/crawler) against real HTTP servers on 127.0.0.1.

Each crawl runs on the module's cmlray session (2 workers of 1 CPU); the
servers count every request by path, so "fetched once" is checked where it
happens. The first tests need neither Ray nor a server.
"""

from __future__ import annotations

import itertools
import sqlite3
import sys
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from tests.support.console import Captured

pytest.importorskip("selectolax", reason="the crawler example needs the 'examples' extra")
pytest.importorskip("aiohttp", reason="the crawler example needs the 'examples' extra")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

from crawler.config import CrawlConfig, FetchConfig
from crawler.demo_site import HTML, DemoServer, DemoSite, Page, generate
from crawler.engine import Crawler
from crawler.parse import parse_html
from crawler.robots import Robots
from crawler.scheduler import Entry, Limits, Scheduler
from crawler.store import Writes
from crawler.urls import normalize

DEMO_PAGES = 150


# --- no Ray, no server -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("href", "base", "expected"),
    [
        ("HTTP://Ex.COM:80/a/./b/../c#frag", None, "http://ex.com/a/c"),
        ("../x.html?b=1#f", "http://h:8080/p/q/r.html", "http://h:8080/p/x.html?b=1"),
        ("//other/x", "https://h/", "https://other/x"),
        ("a b%2f.html", "http://h/d/", "http://h/d/a%20b%2F.html"),
        ("http://h", None, "http://h/"),
        ("mailto:someone@example.invalid", None, None),
        ("javascript:void(0)", "http://h/", None),
        ("http://h:99999/", None, None),
    ],
)
def test_normalize(href: str, base: str | None, expected: str | None) -> None:
    assert normalize(href, base) == expected


def test_malformed_html_still_gives_title_and_links() -> None:
    body = b"<html><title>Broken <b>page</title><div><a href='/a'>x<table><td><a href=b>y"
    title, links = parse_html(body, "http://h/dir/page.html")
    assert title == "Broken <b>page"
    assert links == ["http://h/a", "http://h/dir/b"]


def test_robots_rules_follow_rfc_9309() -> None:
    ua = "cmlray-crawler/0.1"
    rules = Robots(200, "User-agent: *\nDisallow: /private/\nCrawl-delay: 2\n")
    assert not rules.allows("http://h/private/x", ua) and rules.allows("http://h/x", ua)
    assert rules.delay(ua) == 2.0
    assert Robots(404, "").allows("http://h/private/x", ua)  # no robots.txt: all allowed
    assert not Robots(503, "").allows("http://h/x", ua)  # server error: nothing allowed
    assert not Robots(None, "").allows("http://h/x", ua)  # unreachable: nothing allowed


def test_scheduler_keeps_per_host_limit_and_delay() -> None:
    scheduler = Scheduler(Limits(workers=2, concurrency=4, per_host=3, delay=1.0, max_pages=100))
    for i in range(10):
        scheduler.add(Entry(f"http://a/{i}", 0))
        scheduler.add(Entry(f"http://b/{i}", 0))
    batches = scheduler.next_batches(now=1000.0)
    tasks = [t for batch in batches for t in batch]
    for host in ("a", "b"):
        starts = sorted(t["not_before"] for t in tasks if f"//{host}/" in t["url"])
        assert 0 < len(starts) <= 3  # per-host limit across all batches
        assert all(b - a >= 1.0 for a, b in itertools.pairwise(starts))  # the delay


def test_scheduler_stops_at_the_page_budget() -> None:
    scheduler = Scheduler(Limits(workers=1, concurrency=8, per_host=8, delay=0.0, max_pages=12))
    scheduler.stored = 7  # pages an earlier run stored count too
    for i in range(20):
        scheduler.add(Entry(f"http://a/{i}", 0))
    tasks = [t for batch in scheduler.next_batches(now=0.0) for t in batch]
    assert len(tasks) == 5
    assert scheduler.next_batches(now=0.0) == []


def test_depth_scope_and_duplicates_are_decided_before_fetching(tmp_path: Path) -> None:
    with DemoServer(generate(10)) as demo:
        config = CrawlConfig(seeds=(demo.url,), db=str(tmp_path / "d.db"), max_depth=1)
        crawler = Crawler(config)
        writes = Writes()
        try:
            assert crawler.discover(demo.url + "a", 1, 0, writes) is None
            assert crawler.discover(demo.url + "a", 0, 0, writes) is None  # a duplicate
            assert "deeper than 1" in str(crawler.discover(demo.url + "b", 2, 0, writes))
            assert "out of scope" in str(crawler.discover("http://127.0.0.2:1/", 0, 0, writes))
            assert "robots.txt" in str(crawler.discover(demo.url + "private/z", 1, 0, writes))
        finally:
            crawler.close()
        assert [row.url for row in writes.frontier] == [demo.url + "a"]
        assert demo.requests == {"/robots.txt": 1}


# --- crawls on the module's session --------------------------------------------------------


def crawl(
    db: Path,
    seeds: list[str],
    console: Console,
    on_result: Callable[[Crawler], None] | None = None,
    **options: Any,
) -> Crawler:
    """Run one crawl to its end (or until ``on_result`` raises); returns the closed crawler."""
    fetch = {k: options.pop(k) for k in ("timeout", "max_bytes") if k in options}
    config = CrawlConfig(
        seeds=tuple(seeds),
        db=str(db),
        workers=2,
        worker_cpu=1.0,
        max_depth=options.pop("max_depth", 100),
        fetch=FetchConfig(concurrency=8, per_host=48, **fetch),
        **options,
    )
    crawler = Crawler(config, console=console, on_result=on_result)
    try:
        crawler.run()
    finally:
        crawler.close()
    return crawler


def rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql).fetchall()


def stored_paths(db: Path, base: str) -> set[str]:
    return {str(url).removeprefix(base.rstrip("/")) for (url,) in rows(db, "SELECT url FROM pages")}


def page(db: Path, url: str) -> dict[str, object]:
    with closing(sqlite3.connect(db)) as conn:
        conn.row_factory = sqlite3.Row
        found = conn.execute("SELECT * FROM pages WHERE url = ?", (url,)).fetchone()
    assert found is not None, f"{url} not stored"
    return dict(found)


def assert_no_duplicate_rows(db: Path) -> None:
    for table, key in (("pages", "url"), ("links", "src, dst"), ("skipped", "url")):
        dups = rows(db, f"SELECT {key}, count(*) FROM {table} GROUP BY {key} HAVING count(*) > 1")
        assert dups == [], f"duplicate rows in {table}: {dups[:5]}"


@pytest.fixture(scope="module")
def demo_site() -> DemoSite:
    return generate(DEMO_PAGES)


@pytest.fixture
def demo(demo_site: DemoSite) -> Iterator[DemoServer]:
    with DemoServer(demo_site) as server:
        yield server


def test_full_crawl_of_the_demo_site(
    session: str, captured: Captured, demo: DemoServer, demo_site: DemoSite, tmp_path: Path
) -> None:
    db = tmp_path / "crawl.db"
    crawl(db, [demo.url], captured.console)
    expected, _ = demo_site.expected()
    assert stored_paths(db, demo.url) == expected
    assert {u for (u,) in rows(db, "SELECT url FROM skipped")} == {demo.url + "private/"}
    assert demo.requests["/private/"] == 0  # robots.txt obeyed
    assert demo.requests["/robots.txt"] == 1  # once per host
    assert max(demo.requests.values()) == 1  # no URL fetched twice
    assert set(demo.requests) == expected | {"/robots.txt"}
    assert rows(db, "SELECT count(*) FROM frontier") == [(0,)]
    assert_no_duplicate_rows(db)
    redirect = page(db, demo.url + "about-us")
    assert (redirect["status"], redirect["final_url"]) == (301, demo.url + "about.html")
    malformed = page(db, demo.url + "malformed.html")
    assert malformed["title"] == "Broken <b>page"
    src = demo.url + "malformed.html"
    links = {d for (d,) in rows(db, f"SELECT dst FROM links WHERE src = '{src}'")}
    assert links == {demo.url + "page/1.html", demo.url + "about.html"}


# The edge site: every way a server can misbehave, on one site, crawled once.
def _flaky(count: int) -> Page:
    return Page(500, HTML, b"busy") if count <= 2 else Page(body=b"<title>finally</title>")


def _edge_site(elsewhere: str) -> tuple[DemoSite, dict[str, Callable[[int], Page]]]:
    hrefs = ["flaky", "gone", "broken", "hang", "out", "loop-a", "blob", "big", "private/x"]
    home = "".join(f'<a href="/{h}">{h}</a>' for h in hrefs).encode()
    never = b"<a href='/never'>must not be parsed</a>"
    pages = {
        "/": Page(body=b"<title>edge</title>" + home),
        "/robots.txt": Page(200, "text/plain", b"User-agent: *\nDisallow: /private/\n"),
        "/broken": Page(500, HTML, b"always broken"),
        "/hang": Page(body=b"too late", hang_s=30.0),
        "/out": Page(302, HTML, b"", location=elsewhere),
        "/loop-a": Page(301, HTML, b"", location="/loop-b"),
        "/loop-b": Page(301, HTML, b"", location="/loop-a"),
        "/blob": Page(200, "image/png", b"\x89PNG\r\n\x1a\n\x00\x00" + never),
        "/big": Page(200, HTML, never + b"<p>padding</p>" * 10_000),
        "/private/x": Page(body=b"secret"),
    }
    return DemoSite(pages), {"/flaky": _flaky}


@pytest.fixture(scope="module")
def edge(
    session: str, captured: Captured, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """One crawl of the edge site; tests read its database and request counts."""
    db = tmp_path_factory.mktemp("edge") / "edge.db"
    with DemoServer(DemoSite({"/landing": Page(body=b"elsewhere")})) as other:
        site, routes = _edge_site(other.url + "landing")
        with DemoServer(site, routes=routes) as server:
            crawl(
                db,
                [server.url],
                captured.console,
                timeout=3.0,  # generous: only /hang may time out, even on a busy machine
                max_bytes=50_000,
                retries=2,
                backoff=0.05,
            )
            yield {"db": db, "url": server.url, "requests": server.requests, "other": other}


def test_4xx_is_not_retried_and_5xx_is(edge: dict[str, Any]) -> None:
    db, url, requests = edge["db"], edge["url"], edge["requests"]
    assert requests["/gone"] == 1
    assert (page(db, url + "gone")["status"], page(db, url + "gone")["attempts"]) == (404, 1)
    assert requests["/flaky"] == 3  # failed twice, then succeeded
    flaky = page(db, url + "flaky")
    assert (flaky["status"], flaky["attempts"], flaky["title"]) == (200, 3, "finally")
    assert requests["/broken"] == 3  # retries spent: recorded as failed
    broken = page(db, url + "broken")
    assert (broken["status"], broken["error"]) == (500, "HTTP 500")


def test_hanging_server_times_out_and_is_recorded(edge: dict[str, Any]) -> None:
    hang = page(edge["db"], edge["url"] + "hang")
    assert hang["status"] is None and "timeout" in str(hang["error"])
    assert hang["attempts"] == 3 and edge["requests"]["/hang"] == 3


def test_out_of_scope_redirect_is_not_followed(edge: dict[str, Any]) -> None:
    out = page(edge["db"], edge["url"] + "out")
    assert out["status"] == 302 and out["final_url"] == edge["other"].url + "landing"
    assert "out of scope" in str(out["error"])
    assert sum(edge["other"].requests.values()) == 0


def test_redirect_loop_binary_and_oversized_bodies(edge: dict[str, Any]) -> None:
    db, url, requests = edge["db"], edge["url"], edge["requests"]
    assert requests["/loop-a"] == requests["/loop-b"] == 1
    assert page(db, url + "loop-b")["final_url"] == url + "loop-a"
    blob = page(db, url + "blob")
    assert blob["content_type"] == "image/png" and blob["title"] is None and blob["size"] == 49
    big = page(db, url + "big")
    assert big["size"] == 50_000 and "truncated" in str(big["error"])
    assert requests["/never"] == 0  # neither body was parsed for links
    assert rows(db, f"SELECT count(*) FROM links WHERE src IN ('{url}blob', '{url}big')") == [(0,)]


def test_edge_crawl_robots_and_rows(edge: dict[str, Any]) -> None:
    assert edge["requests"]["/private/x"] == 0
    assert edge["requests"]["/robots.txt"] == 1
    assert_no_duplicate_rows(edge["db"])
    expected = {"/", "/flaky", "/gone", "/broken", "/hang", "/out", "/loop-a", "/loop-b"}
    assert stored_paths(edge["db"], edge["url"]) == expected | {"/blob", "/big"}


class CrashError(Exception):
    """Breaks a crawl midway, as a killed session would."""


def test_resume_after_a_stop_and_a_crash(
    session: str, captured: Captured, demo_site: DemoSite, tmp_path: Path
) -> None:
    db = tmp_path / "resume.db"
    console = captured.console

    def stop_at(n: int) -> Callable[[Crawler], None]:
        return lambda c: c.stop() if c.counters.stored >= n else None

    def crash_at(n: int) -> Callable[[Crawler], None]:
        def check(c: Crawler) -> None:
            if c.counters.stored >= n:
                raise CrashError

        return check

    with DemoServer(demo_site) as demo:
        crawl(db, [demo.url], console, on_result=stop_at(30))  # a graceful stop (Ctrl-C)
        first = stored_paths(db, demo.url)
        assert 30 <= len(first) < len(demo_site.expected()[0])
        assert set(demo.requests) == first | {"/robots.txt"}  # nothing lost in flight
        with pytest.raises(CrashError):
            crawl(db, [demo.url], console, on_result=crash_at(30))  # a crash
        second = stored_paths(db, demo.url)
        assert first < second
        requested_before_resume = set(demo.requests)
        crawl(db, [demo.url], console)
        assert stored_paths(db, demo.url) == demo_site.expected()[0]
    twice = {path for path, n in demo.requests.items() if n > 1}
    assert not twice & second  # no stored page fetched again
    assert twice <= requested_before_resume - second  # only those in flight at the crash
    assert demo.requests["/robots.txt"] == 1  # robots.txt is kept in the database too
    assert_no_duplicate_rows(db)
