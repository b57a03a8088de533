"""A generated demo web site and a real HTTP server for it, on 127.0.0.1.

The crawler's default target (so the example runs offline), and the site
the tests and the benchmark crawl. It has a few hundred pages in sections,
links spelled every which way (relative, ``..``, fragments), broken links
(404), a redirect, a ``robots.txt`` rule, an out-of-scope link, binary
files and a page of malformed HTML. :meth:`DemoSite.expected` says, from
the generator's own link lists, which paths a correct crawl stores and
which it must skip, so tests compare against an answer computed without
the crawler's code.

Run ``python -m crawler.demo_site --pages 500 --latency 0.05`` (from
``examples/``) to serve it in a process of its own: it prints its URL.
"""

from __future__ import annotations

import argparse
import random
import signal
import threading
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HTML = "text/html; charset=utf-8"
DISALLOWED = ("/private/",)
WORDS = ("crawler", "queue", "worker", "frontier", "polite", "robots", "session", "ray", "page")


@dataclass(frozen=True)
class Page:
    """One response of the site.

    Attributes:
        status: the HTTP status.
        content_type: the Content-Type header.
        body: the response body.
        location: the Location header of a redirect.
        links: the in-site paths the body links to, canonical (for ``expected``).
        hang_s: seconds to stall before answering (a server that hangs).
    """

    status: int = 200
    content_type: str = HTML
    body: bytes = b""
    location: str | None = None
    links: tuple[str, ...] = ()
    hang_s: float = 0.0


NOT_FOUND = Page(404, HTML, b"<html><head><title>Not found</title></head><body>404</body></html>")

# A route computes a page from how often its path was requested (1 on the first request).
Route = Callable[[int], Page]


def _html(title: str, hrefs: list[str], rng: random.Random) -> bytes:
    """A small HTML page: a title, some prose, the given links."""
    prose = " ".join(rng.choice(WORDS) for _ in range(rng.randint(80, 300)))
    anchors = "\n".join(f'<li><a href="{h}">{h}</a></li>' for h in hrefs)
    return (
        f"<!doctype html><html><head><title>{title}</title></head>"
        f"<body><h1>{title}</h1><p>{prose}</p><ul>{anchors}</ul></body></html>"
    ).encode()


def _page_hrefs(i: int, n_pages: int, rng: random.Random) -> tuple[list[str], list[str]]:
    """(hrefs as written, canonical paths) for page ``i``: spelled several ways."""
    targets = rng.sample(range(n_pages), 3)
    spellings = [
        f"/page/{targets[0]}.html",
        f"../page/{targets[1]}.html#part",
        f"{targets[2]}.html",
    ]
    paths = [f"/page/{t}.html" for t in targets]
    spellings.append(f"/section/{i % _sections(n_pages)}.html")
    paths.append(f"/section/{i % _sections(n_pages)}.html")
    if i % 25 == 7:
        spellings.append(f"/missing/page-{i}.html")
        paths.append(f"/missing/page-{i}.html")
    if i % 50 == 3:
        spellings.append(f"/files/report-{i}.pdf")
        paths.append(f"/files/report-{i}.pdf")
    return spellings, paths


def _sections(n_pages: int) -> int:
    return max(1, n_pages // 25)


def _section(k: int, n_pages: int, rng: random.Random) -> Page:
    members = range(k, n_pages, _sections(n_pages))
    hrefs = [f"../page/{i}.html" for i in members] + [f"/missing/section-{k}.html", "../"]
    paths = tuple([f"/page/{i}.html" for i in members] + [f"/missing/section-{k}.html", "/"])
    return Page(body=_html(f"Section {k}", hrefs, rng), links=paths)


def _home(n_pages: int, rng: random.Random) -> Page:
    sections = [f"/section/{k}.html" for k in range(_sections(n_pages))]
    extra = ["/about-us", "/private/", "/files/dataset.bin", "/malformed.html"]
    hrefs = [*sections, *extra, "http://external.invalid/", "mailto:team@example.invalid"]
    return Page(body=_html("Demo site", hrefs, rng), links=tuple(sections + extra))


MALFORMED = (
    b"<html><head><title>Broken <b>page</title><body><div><a href='/page/1.html'>one"
    b"<div></span></p><table><tr><td><a href=/about.html>about</table> <<>> &bogus; \x00"
)


def _fixed_pages(rng: random.Random) -> dict[str, Page]:
    """The special pages: robots.txt, a redirect, private pages, binaries, malformed HTML."""
    blob = bytes(rng.getrandbits(8) for _ in range(20_000))
    return {
        "/robots.txt": Page(200, "text/plain", b"User-agent: *\nDisallow: /private/\n"),
        "/about-us": Page(301, HTML, b"moved", location="/about.html"),
        "/about.html": Page(body=_html("About", ["/", "/about-us"], rng), links=("/", "/about-us")),
        "/private/": Page(
            body=_html("Private", ["secret.html"], rng), links=("/private/secret.html",)
        ),
        "/private/secret.html": Page(body=_html("Secret", [], rng)),
        "/files/dataset.bin": Page(200, "application/octet-stream", blob),
        "/malformed.html": Page(200, HTML, MALFORMED, links=("/page/1.html", "/about.html")),
    }


def generate(n_pages: int = 300, seed: int = 6) -> DemoSite:
    """A deterministic site of ``n_pages`` pages (plus sections and special pages)."""
    rng = random.Random(seed)
    pages = _fixed_pages(rng)
    pages["/"] = _home(n_pages, rng)
    for k in range(_sections(n_pages)):
        pages[f"/section/{k}.html"] = _section(k, n_pages, rng)
    for i in range(n_pages):
        hrefs, paths = _page_hrefs(i, n_pages, rng)
        pages[f"/page/{i}.html"] = Page(body=_html(f"Page {i}", hrefs, rng), links=tuple(paths))
        if i % 50 == 3:
            pages[f"/files/report-{i}.pdf"] = Page(200, "application/pdf", b"%PDF-1.4\n" * 300)
    return DemoSite(pages)


@dataclass
class DemoSite:
    """The site's pages by path, and the answer a correct crawl gives."""

    pages: dict[str, Page]
    disallowed: tuple[str, ...] = DISALLOWED

    def page(self, path: str) -> Page:
        return self.pages.get(path, NOT_FOUND)

    def expected(self) -> tuple[set[str], set[str]]:
        """(paths a crawl from ``/`` stores, paths it skips for robots.txt)."""
        stored: set[str] = set()
        skipped: set[str] = set()
        todo = deque(["/"])
        while todo:
            path = todo.popleft()
            if path in stored or path in skipped:
                continue
            if path.startswith(self.disallowed):
                skipped.add(path)
                continue
            stored.add(path)
            page = self.page(path)
            todo.extend([page.location] if page.location else page.links)
        return stored, skipped


class _Handler(BaseHTTPRequestHandler):
    """Serves :class:`DemoServer`'s pages; counts every request by path."""

    protocol_version = "HTTP/1.1"  # keep-alive, as real servers
    disable_nagle_algorithm = True  # else headers and body, written apart, wait 40 ms for an ACK
    server: _Server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0] if "://" not in self.path else urlsplit(self.path).path
        page = self.server.owner.respond(path)
        if page.hang_s and self.server.owner.stopping.wait(page.hang_s):
            return
        self.send_response(page.status)
        self.send_header("Content-Type", page.content_type)
        self.send_header("Content-Length", str(len(page.body)))
        if page.location:
            self.send_header("Location", page.location)
        self.end_headers()
        self.wfile.write(page.body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the tests and the example print their own account."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    owner: DemoServer


@dataclass
class DemoServer:
    """A real threaded HTTP server for a site, bound to 127.0.0.1 (port 0: any free one).

    Args:
        site: the pages to serve (paths not in it are 404).
        latency: seconds each response waits first (a distant server).
        routes: paths answered by a function of their request count
            (a server that fails twice, then succeeds).
        host: the address to bind; loopback unless workers on other hosts
            must reach it (a multi-host test binds its own test host's IP).
    """

    site: DemoSite
    latency: float = 0.0
    routes: Mapping[str, Route] = field(default_factory=dict)
    port: int = 0
    host: str = "127.0.0.1"
    requests: Counter[str] = field(default_factory=Counter)
    stopping: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: _Server | None = None

    @property
    def url(self) -> str:
        """``http://<host>:<port>/``, the site's home page."""
        assert self._server is not None, "the server is not started"
        return f"http://{self.host}:{self._server.server_address[1]}/"

    def respond(self, path: str) -> Page:
        """Counts the request, waits out the latency, picks the page."""
        with self._lock:
            self.requests[path] += 1
            count = self.requests[path]
        if self.latency:
            self.stopping.wait(self.latency)
        route = self.routes.get(path)
        return route(count) if route else self.site.page(path)

    def start(self) -> DemoServer:
        self._server = _Server((self.host, self.port), _Handler)
        self._server.owner = self
        threading.Thread(target=self._server.serve_forever, name="demo-site", daemon=True).start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> DemoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    """Serve a generated site until SIGTERM; print its URL (for the benchmark)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=300)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    args = parser.parse_args()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    site = generate(args.pages)
    with DemoServer(site, latency=args.latency, port=args.port, host=args.host) as server:
        print(server.url, flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
