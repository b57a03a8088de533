"""What the README's development section promises, checked on every run: lint, format, types.

ruff (lint and format) over the whole project and ``mypy --strict`` over the
library run as part of the suite, so CI (``.ci/run``, which runs the README's
test command) checks them on every landing, with the versions pinned by the
``test`` extra.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLS = Path(sys.executable).parent
CHECKED = ["cmlray", "tests", "benchmarks", "examples", "noxfile.py"]


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    "argv",
    [
        ["ruff", "check", *CHECKED],
        ["ruff", "format", "--check", *CHECKED],
    ],
    ids=["ruff check", "ruff format"],
)
def test_ruff(argv: list[str]) -> None:
    done = _run(str(TOOLS / argv[0]), *argv[1:])
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_mypy_strict() -> None:
    with tempfile.TemporaryDirectory(prefix="cmlray-mypy-") as cache:
        done = _run(str(TOOLS / "mypy"), "--cache-dir", os.path.join(cache, "cache"))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
