"""HTML parsing with selectolax (lexbor): a page's title and its links, normalised.

Shared by the workers and by the Scrapy spider of the benchmark, so both
crawlers see the same links in the same pages.
"""

from __future__ import annotations

import codecs

from selectolax.lexbor import LexborHTMLParser

from crawler.urls import normalize


def decode(body: bytes, charset: str | None) -> str:
    """The body as text: the declared charset if Python knows it, else UTF-8; never raises."""
    try:
        codec = codecs.lookup(charset or "utf-8").name
    except LookupError:
        codec = "utf-8"
    return body.decode(codec, errors="replace")


def parse_html(body: bytes, url: str, charset: str | None = None) -> tuple[str | None, list[str]]:
    """(title, links) of an HTML page; links are absolute, normalised, unique, in order.

    Malformed markup is parsed the way a browser would (HTML5 error recovery);
    ``<base href>`` is honoured; links that are not http(s) or point at the
    page itself are left out.
    """
    tree = LexborHTMLParser(decode(body, charset))
    title_node = tree.css_first("title")
    title = " ".join(title_node.text().split()) if title_node is not None else None
    base_node = tree.css_first("base[href]")
    base = normalize(base_node.attributes.get("href") or "", url) if base_node else None
    links: dict[str, None] = {}
    for anchor in tree.css("a[href]"):
        link = normalize(anchor.attributes.get("href") or "", base or url)
        if link is not None and link != url:
            links[link] = None
    return title or None, list(links)
