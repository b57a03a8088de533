"""URL normalisation and scope: one spelling per page, so no page is fetched twice.

The session de-duplicates on the normalised form, the workers resolve links
with it, and the Scrapy benchmark spider uses it too, so every crawler of
the benchmark stores the same strings.
"""

from __future__ import annotations

import re
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}
_ESCAPE = re.compile(r"%[0-9a-fA-F]{2}")
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_QUERY_SAFE = _PATH_SAFE + "?"


def _upper_escapes(text: str) -> str:
    """``%2f`` and ``%2F`` are the same byte: spell escapes one way."""
    return _ESCAPE.sub(lambda m: m.group(0).upper(), text)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4: ``/a/./b/../c`` is ``/a/c``; a trailing slash is kept."""
    out: list[str] = []
    segments = path.split("/")
    for segment in segments[1:]:
        if segment == "..":
            if out:
                out.pop()
        elif segment != ".":
            out.append(segment)
    trailing = segments[-1] in (".", "..")
    return "/" + "/".join(out) + ("/" if trailing and out else "")


def _netloc(scheme: str, host: str, port: int | None) -> str:
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    return host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"


def normalize(href: str, base: str | None = None) -> str | None:
    """The canonical absolute form of ``href`` (resolved against ``base``), or None.

    Lower-case scheme and host, no default port, no credentials, no fragment,
    dot segments resolved, an empty path as ``/``, percent escapes in one
    case. Only http and https URLs are kept (None for ``mailto:`` and the like).
    """
    try:
        parts = urlsplit(urljoin(base, href.strip()) if base else href.strip())
        scheme, host, port = parts.scheme.lower(), parts.hostname, parts.port
    except ValueError:  # a malformed port or IPv6 literal
        return None
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    path = _remove_dot_segments(quote(parts.path or "/", safe=_PATH_SAFE))
    query = quote(parts.query, safe=_QUERY_SAFE)
    netloc = _netloc(scheme, host.lower(), port)
    return urlunsplit((scheme, netloc, _upper_escapes(path), _upper_escapes(query), ""))


def host_of(url: str) -> str:
    """The politeness and scope key of a normalised URL: ``host[:port]``."""
    return urlsplit(url).netloc


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of a normalised URL (where its robots.txt lives)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
