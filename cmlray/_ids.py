"""Identifiers and timestamps in CML's formats."""

from __future__ import annotations

import secrets
import string
from datetime import UTC, datetime

_ID_ALPHABET = string.ascii_lowercase + string.digits
ID_LENGTH = 16


def new_id() -> str:
    """A fresh id of 16 lowercase letters and digits, as CML's engine ids."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(ID_LENGTH))


def is_id(value: object) -> bool:
    return (
        isinstance(value, str) and len(value) == ID_LENGTH and all(c in _ID_ALPHABET for c in value)
    )


def iso_utc(timestamp: float | None) -> str | None:
    """``2026-11-27T01:02:03.456Z`` for a Unix time; None stays None."""
    if timestamp is None:
        return None
    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
