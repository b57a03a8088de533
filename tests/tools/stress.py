"""Stress: run the test suite N times, quiet and under a busy neighbour, per-test table.

A test that fails without a bug blocks every landing at random; this script
finds such tests. Each run is ``python -m pytest`` on the whole suite (or the
paths given) with a JUnit XML report; runs alternate between:

- ``quiet``: nothing else on purpose;
- ``busy``: a neighbour for the whole run: two processes spinning on the CPU
  and one doing heavy file I/O (writes, fsync, reads of a 64 MiB file);
- either of those with ``--shuffle``: modules in a random order and tests
  in a random order within each module (``CMLRAY_SHUFFLE_SEED``, read by
  tests/conftest.py; the seed is in the table, to replay an order).

``--fresh-clone`` runs each time in a fresh ``git clone`` of this checkout
with a venv of its own (slower: an install per run); ``--ci`` runs exactly
what CI runs, ``bash .ci/run``, in a fresh clone (its own venv and installs
included; the JUnit report is asked for through ``PYTEST_ADDOPTS``).

Prints a table (one row per test that did not pass every time, then totals)
and writes everything to ``benchmarks/results/stress.json``.

Usage: ``python tests/tools/stress.py [-n RUNS] [--busy-every K] [--shuffle]
[--shuffle-from K] [--fresh-clone | --ci] [-- PYTEST ARGS]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results" / "stress.json"
IO_FILE_BYTES = 64 << 20


def _spin() -> None:
    while True:
        pass


def _churn(folder: str) -> None:
    path = os.path.join(folder, "churn.bin")
    block = os.urandom(1 << 20)
    while True:
        with open(path, "wb") as f:
            for _ in range(IO_FILE_BYTES // len(block)):
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
        with open(path, "rb") as f:
            while f.read(1 << 20):
                pass


@contextlib.contextmanager
def neighbour(busy: bool) -> Iterator[None]:
    """Two CPU spinners and one I/O churner for the duration, when ``busy``."""
    if not busy:
        yield
        return
    folder = tempfile.mkdtemp(prefix="cmlray-stress-")
    procs = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(2)]
    procs.append(multiprocessing.Process(target=_churn, args=(folder,), daemon=True))
    for proc in procs:
        proc.start()
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.join()
        shutil.rmtree(folder, ignore_errors=True)


def fresh_clone(into: Path) -> Path:
    """A clone of this checkout's HEAD with its own venv, as CI makes it."""
    subprocess.run(["git", "clone", "-q", str(REPO), str(into)], check=True)
    venv = into / ".venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "pip"), "install", "-q", "-e", ".[test,examples]"]
    subprocess.run(pip, cwd=into, check=True)
    return venv / "bin" / "python"


def run_suite(argv: list[str], cwd: Path, report: Path, seed: int | None) -> Any:
    env = dict(os.environ)
    env.pop("CMLRAY_SHUFFLE_SEED", None)
    if seed is not None:
        env["CMLRAY_SHUFFLE_SEED"] = str(seed)
    env["PYTEST_ADDOPTS"] = f"-p no:cacheprovider --junitxml={report}"
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    summary = proc.stdout.strip().splitlines()[-1:] or [""]
    return {"rc": proc.returncode, "seconds": time.monotonic() - started, "summary": summary[0]}


def outcomes(report: Path) -> dict[str, str]:
    """test id -> passed | failed | error | skipped, from a JUnit XML report."""
    found: dict[str, str] = {}
    if not report.exists():
        return found
    for case in ET.parse(report).getroot().iter("testcase"):
        test = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        outcome = next((k for k in ("error", "failure", "skipped") if k in kinds), "passed")
        found[test] = "failed" if outcome == "failure" else outcome
        if "error" in kinds and "failure" in kinds:
            found[test] = "failed+error"
    return found


def one_run(index: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    busy = args.busy_every > 0 and index % args.busy_every == args.busy_every - 1
    shuffled = args.shuffle or (args.shuffle_from and index + 1 >= args.shuffle_from)
    seed = random.randrange(1 << 30) if shuffled else None
    cwd, report = REPO, workdir / f"run-{index}.xml"
    argv = [sys.executable, "-m", "pytest", "-q", *args.pytest_args]
    if args.ci:
        cwd = workdir / f"clone-{index}"
        subprocess.run(["git", "clone", "-q", str(REPO), str(cwd)], check=True)
        argv = ["bash", ".ci/run"]
    elif args.fresh_clone:
        cwd = workdir / f"clone-{index}"
        argv[0] = str(fresh_clone(cwd))
    with neighbour(busy):
        result = run_suite(argv, cwd, report, seed)
    if cwd != REPO:
        shutil.rmtree(cwd, ignore_errors=True)
    label = ("busy" if busy else "quiet") + (f" shuffled {seed}" if seed is not None else "")
    return {"run": index + 1, "mode": label, **result, "tests": outcomes(report)}


def print_table(runs: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    tests = sorted({t for run in runs for t in run["tests"]})
    flaky = [
        t
        for t in tests
        if any(r["tests"].get(t, "passed") not in ("passed", "skipped") for r in runs)
    ]
    table = Table(title=f"test suite x {len(runs)} runs: tests that did not always pass")
    table.add_column("test")
    for run in runs:
        table.add_column(f"{run['run']}: {run['mode']}", justify="center")
    for test in flaky:
        table.add_row(test, *(run["tests"].get(test, "-") for run in runs))
    table.add_row("", *("" for _ in runs))
    table.add_row("[b]passed / all[/b]", *(_count(run) for run in runs))
    table.add_row("[b]exit code[/b]", *(str(run["rc"]) for run in runs))
    table.add_row("[b]minutes[/b]", *(f"{run['seconds'] / 60:.1f}" for run in runs))
    Console(width=max(120, 40 + 24 * len(runs))).print(table)
    print(f"{len(tests)} tests; {len(flaky)} did not pass every time")


def _bad(outcome: str) -> bool:
    return outcome not in ("passed", "skipped")


def _count(run: dict[str, Any]) -> str:
    values = list(run["tests"].values())
    return f"{values.count('passed')} / {len(values)}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=4, help="how many runs (default 4)")
    parser.add_argument(
        "--busy-every", type=int, default=2, help="every K-th run has a busy neighbour (0: none)"
    )
    parser.add_argument("--shuffle", action="store_true", help="shuffle the test order per run")
    parser.add_argument(
        "--shuffle-from", type=int, default=0, help="shuffle from the K-th run on (0: never)"
    )
    parser.add_argument("--fresh-clone", action="store_true", help="each run in a fresh clone")
    parser.add_argument("--ci", action="store_true", help="each run: bash .ci/run in a fresh clone")
    parser.add_argument("pytest_args", nargs="*", help="after --: passed on to pytest")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.busy_every < 0:
        parser.error("--runs must be >= 1 and --busy-every >= 0")
    runs = []
    with tempfile.TemporaryDirectory(prefix="cmlray-stress-") as workdir:
        for index in range(args.runs):
            runs.append(one_run(index, args, Path(workdir)))
            last = runs[-1]
            print(f"run {index + 1}/{args.runs} ({last['mode']}): {last['summary']}", flush=True)
    print_table(runs)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"runs": runs}, indent=2))
    print(f"written: {RESULTS}")
    return 0 if all(run["rc"] == 0 for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
