"""The reason a worker over its memory gets: its use visibly above its limit."""

from __future__ import annotations

from cmlray._guard import GIB, exceeded_words


def test_use_just_over_the_limit_gets_the_decimals_it_needs() -> None:
    limit = GIB // 4
    assert exceeded_words(limit + (200 << 10), limit) == (
        "exceeded memory: used 0.2502 GiB of 0.25 GiB"
    )


def test_use_well_over_the_limit_reads_plainly() -> None:
    assert exceeded_words(400 << 20, GIB // 4) == "exceeded memory: used 0.39 GiB of 0.25 GiB"
