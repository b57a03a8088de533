"""Developer tasks: ``nox -s tests``, ``lint``, ``typecheck``, ``bench``."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite against real Ray and real subprocesses."""
    session.install("-e", ".[test,examples]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting."""
    session.install("ruff==0.17.6")
    session.run("ruff", "check", "cmlray", "tests", "benchmarks", "examples", "noxfile.py")
    session.run("ruff", "format", "--check", "cmlray", "tests", "benchmarks", "examples")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the library."""
    session.install("-e", ".", "mypy==2.4.1")
    session.run("mypy")


@nox.session
def stress(session: nox.Session) -> None:
    """The suite N times, quiet and under a busy neighbour: a table of who failed when.

    ``nox -s stress -- -n 6 --shuffle`` (see tests/tools/stress.py for options).
    """
    session.install("-e", ".[test,examples]")
    session.run("python", "tests/tools/stress.py", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmarks, cmlray side by side with raw Ray; tables on stdout, JSON in results/."""
    session.install("-e", ".[test,examples,bench]")
    names = (
        "launch", "scale", "launch_designs", "relay_end_to_end", "relay_cpu", "relay_formatting",
        "queue_throughput", "executor_big_function", "runtime_floor", "sweep_vs_gridsearch",
        "crawl_vs_scrapy",
    )  # fmt: skip
    for name in names:
        session.run("python", f"benchmarks/{name}.py", *session.posargs)
