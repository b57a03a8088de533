"""robots.txt: fetched once per host by the session, kept in the database, obeyed.

RFC 9309's rules for a robots.txt that cannot be read: a 4xx means there is
no robots.txt (everything allowed); a 5xx or no answer at all means the
host is off limits for this crawl (everything disallowed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.error import HTTPError
from urllib.request import ProxyHandler, Request, build_opener
from urllib.robotparser import RobotFileParser

MAX_ROBOTS_BYTES = 512_000
_OPENER = build_opener(ProxyHandler({}))  # straight to the host, never via an env proxy


def fetch_robots(origin: str, user_agent: str, timeout: float) -> tuple[int | None, str]:
    """(HTTP status or None when unreachable, body) of ``origin``'s robots.txt."""
    request = Request(origin + "/robots.txt", headers={"User-Agent": user_agent})
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            body = response.read(MAX_ROBOTS_BYTES)
            return response.status, body.decode("utf-8", errors="replace")
    except HTTPError as exc:
        return exc.code, ""
    except (OSError, ValueError):  # refused, timed out, malformed answer
        return None, ""


@dataclass
class Robots:
    """One host's robots.txt, parsed.

    Attributes:
        status: the HTTP status robots.txt was served with (None: unreachable).
        body: its text.
    """

    status: int | None
    body: str
    parser: RobotFileParser = field(init=False)

    def __post_init__(self) -> None:
        self.parser = RobotFileParser()
        if self.status is None or self.status >= 500:
            self.parser.parse(["User-agent: *", "Disallow: /"])
        elif self.status < 400:
            self.parser.parse(self.body.splitlines())
        else:
            self.parser.parse([])  # no rules: everything allowed

    def allows(self, url: str, user_agent: str) -> bool:
        """May ``user_agent`` fetch ``url``?"""
        return self.parser.can_fetch(user_agent, url)

    def delay(self, user_agent: str) -> float:
        """The Crawl-delay it asks of ``user_agent``, 0 when none."""
        value = self.parser.crawl_delay(user_agent)
        return float(value) if value is not None else 0.0
