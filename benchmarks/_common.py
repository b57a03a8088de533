"""Helpers shared by the benchmark scripts.

The cmlray-against-its-peers benchmarks (launch.py, queue_throughput.py, ...) share one shape: a
parent process marks its run (``RUN_MARK`` in the environment, inherited by
every process it starts), runs each Ray session in a fresh child process of
the same script (``--child MODE``) that prints one marked JSON line, waits
after each child until none of the run's processes is left, kills (by pid,
never ``ray stop``) and reports any left at the end, and writes everything to
a JSON file under ``benchmarks/results/``. This module holds those pieces,
the raw-Ray session set up as cmlray sets up its own (token auth), and a few
small reporting helpers.

Imports: only the standard library at module level, and only modules the
scripts imported themselves before this module existed: the launch children
time ``import cmlray`` in a fresh interpreter, so importing this module must
not import early anything cmlray or Ray would import (psutil, Rich, Ray are
imported inside the functions that use them). No script here is named after a
standard library module or an installed package (the folder heads sys.path
when a script runs).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import psutil
    from rich.console import Console

Json = dict[str, Any]
T = TypeVar("T")

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
RESULTS_DIR = BENCHMARKS / "results"

SIDES = ("cmlray", "ray")
RESULT_PREFIX = "BENCH_RESULT "
RUN_MARK = "CMLRAY_BENCH_RUN"
CHILD_TIMEOUT_S = 240.0
ROUNDS = 3  # rounds of a script run in rounds, unless told (``rounds_of``)
SETTLE_S = 10.0
LEAK_WAIT_S = 15.0


# --------------------------------------------------------------------------
# Children: a fresh interpreter per Ray session, answering with one JSON line.
# --------------------------------------------------------------------------


def emit(result: Json) -> None:
    """The child's answer to the parent: one marked JSON line on stdout."""
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()


@contextlib.contextmanager
def timer(into: Json, key: str) -> Iterator[None]:
    """Time the block (``time.perf_counter``) into ``into[key]``, in seconds."""
    start = time.perf_counter()
    yield
    into[key] = time.perf_counter() - start


def iso_to_unix(stamp: str) -> float:
    """Unix time of an ISO-8601 stamp such as a worker dict's ``running_at`` (``...Z``)."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def quiet_console() -> Console:
    """A Rich console that keeps workers' lines off stdout (still formatted)."""
    from rich.console import Console

    return Console(file=io.StringIO(), force_terminal=False, width=120)


def enable_token_auth() -> str:
    """Token auth for raw Ray as cmlray sets it up: a 0600 file with a random hex token.

    Call it before Ray is imported (Ray caches its config). Returns the
    private temp dir holding the token, to be Ray's ``_temp_dir`` too.
    """
    temp_dir = tempfile.mkdtemp(prefix="bench-ray-")
    path = os.path.join(temp_dir, "auth_token")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    os.environ.pop("RAY_AUTH_TOKEN", None)
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = path
    return temp_dir


def ray_init(temp_dir: str, num_cpus: int, *, log_to_driver: bool = False) -> None:
    """Start a raw Ray head with cmlray's own ``ray.init`` arguments.

    ``log_to_driver=True`` is the one difference the relay benchmark needs:
    Ray's own log forwarding is what it measures.
    """
    import ray

    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        log_to_driver=log_to_driver,
        logging_level=logging.WARNING,
        _temp_dir=temp_dir,
    )


def wait_idle(num_cpus: float, timeout_s: float) -> None:
    """Wait (untimed) until every CPU of the head is free again."""
    import ray

    deadline = time.monotonic() + timeout_s
    while ray.available_resources().get("CPU", 0.0) < num_cpus - 1e-6:
        if time.monotonic() > deadline:
            raise RuntimeError(f"CPUs still busy after {timeout_s:g} s")
        time.sleep(0.02)


def ray_shutdown(timings: Json, key: str, temp_dir: str) -> None:
    """``ray.shutdown()``, timed into ``timings[key]``; then remove ``temp_dir``."""
    import ray

    try:
        with timer(timings, key):
            ray.shutdown()
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


@contextlib.contextmanager
def ray_session(num_cpus: int) -> Iterator[None]:
    """A raw Ray head with token auth, as cmlray starts one; shut down and removed after."""
    temp_dir = enable_token_auth()
    ray_init(temp_dir, num_cpus)
    try:
        yield
    finally:
        ray_shutdown({}, "shutdown_s", temp_dir)


@contextlib.contextmanager
def dask_client(workers: int) -> Iterator[Any]:
    """A Dask client on a ``LocalCluster`` of single-threaded processes, loopback, no dashboard."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                     dashboard_address=None, host="127.0.0.1") as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        yield client


# --------------------------------------------------------------------------
# Processes of the run: everything the parent starts carries RUN_MARK.
# --------------------------------------------------------------------------


def mark_run() -> str:
    """Give this run a fresh mark, inherited by every process it starts; returns it."""
    mark = uuid.uuid4().hex
    os.environ[RUN_MARK] = mark
    return mark


def marked_processes(mark: str) -> list[psutil.Process]:
    """Live processes (other than this one) whose environment carries the run's mark."""
    import psutil

    needle = f"{RUN_MARK}={mark}".encode()
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            with open(f"/proc/{proc.pid}/environ", "rb") as f:
                marked = needle in f.read().split(b"\0")
            if marked and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (OSError, psutil.Error):
            continue
    return found


def describe(proc: psutil.Process) -> str:
    """``pid command line`` (cut to 150 characters) of a process, for reports."""
    import psutil

    try:
        return f"{proc.pid} {' '.join(proc.cmdline())[:150] or proc.name()}"
    except psutil.Error:
        return f"{proc.pid} (gone)"


def survivors(mark: str, timeout_s: float) -> list[psutil.Process]:
    """Wait up to ``timeout_s`` for the run's processes to end; those still alive."""
    deadline = time.monotonic() + timeout_s
    while (left := marked_processes(mark)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def wait_gone(mark: str, timeout_s: float) -> list[str]:
    """Wait until no process of this run is left; describes those still there."""
    return [describe(proc) for proc in survivors(mark, timeout_s)]


def check_leftovers(mark: str, timeout_s: float = LEAK_WAIT_S) -> list[str]:
    """Wait for this run's processes to end; kill (by pid) and name any left."""
    import psutil

    left = survivors(mark, timeout_s)
    described = [describe(proc) for proc in left]
    for proc in left:  # psutil checks the pid still names the same process
        with contextlib.suppress(psutil.Error):
            proc.kill()
    return described


def ray_named(described: Sequence[str]) -> list[str]:
    """The leftovers that are Ray's own processes (raylet, gcs_server, ray::...)."""
    return [d for d in described if any(n in d for n in ("raylet", "gcs_server", "ray::"))]


# --------------------------------------------------------------------------
# Parent: children, the run as a whole, results.
# --------------------------------------------------------------------------


def spawn_child(
    script: str | Path,
    mode: str,
    *extra: str,
    record_settle: bool = False,
    timeout_s: float = CHILD_TIMEOUT_S,
) -> Json:
    """Run ``script --child mode *extra`` in a fresh interpreter; its parsed JSON result.

    The child runs from the repository root and must print its result with
    ``emit``; a non-zero exit, no result line or more than ``timeout_s``
    raise RuntimeError. Afterwards waits (up to ``SETTLE_S``) until no process
    of the run is left, so the next child starts on a quiet machine: those
    still there are the result's ``lingering``; ``record_settle`` also records
    the wait as ``settle_s`` (how long the child's processes outlived it).
    """
    command = [sys.executable, str(Path(script).resolve()), "--child", mode, *extra]
    try:
        proc = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, cwd=REPO, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"child {mode} timed out after {timeout_s:g} s") from exc
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.splitlines()[-30:])
        raise RuntimeError(f"child {mode} failed (exit {proc.returncode}):\n{tail}")
    result: Json = json.loads(lines[-1][len(RESULT_PREFIX) :])
    settled = time.perf_counter()
    result["lingering"] = wait_gone(os.environ[RUN_MARK], SETTLE_S)
    if record_settle:
        result["settle_s"] = time.perf_counter() - settled
    return result


def alternating(index: int, pair: tuple[T, T]) -> tuple[T, T]:
    """Which of ``pair`` goes first in round ``index``: they take turns."""
    first, second = in_turns(index, pair)
    return first, second


def in_turns(index: int, sides: Sequence[T]) -> list[T]:
    """``sides`` in round ``index``'s order: as given in even rounds, reversed in odd ones."""
    return list(sides) if index % 2 == 0 else list(reversed(sides))


def progress(message: str) -> None:
    """A progress line on stderr (stdout is for the tables)."""
    print(f"  {message}", file=sys.stderr, flush=True)


def machine() -> Json:
    """What the run ran on: CPU count and Python version."""
    return {"cpus": os.cpu_count(), "python": sys.version.split()[0]}


def installed_bytecode() -> Json:
    """Compile cmlray's bytecode once, before any window, as installing it does.

    pip compiles a wheel's modules when it installs them, as it did Ray's,
    Dask's and joblib's here. A checkout installed editable has none, and
    where ``PYTHONDONTWRITEBYTECODE`` is set (this machine sets it) Python
    never writes any: every process of a cmlray session (the session, each
    agent, zygote and worker) would compile from source each module it
    imports, measured here as 40-50 ms more from ``launch_workers`` to a
    program's first line and 4 ms to 10 ms for a worker's ``import
    cmlray.worker``. Returns where and how many modules were compiled.
    """
    import compileall
    import importlib.util

    spec = importlib.util.find_spec("cmlray")
    if spec is None or spec.origin is None:
        return {"package": None, "compiled": False}
    package = Path(spec.origin).parent
    with contextlib.redirect_stdout(io.StringIO()):
        compiled = bool(compileall.compile_dir(package, quiet=1))
    modules = len(list(package.glob("*.py")))
    return {"package": str(package), "compiled": compiled, "modules": modules}


def write_json(path: Path, payload: Json) -> Path:
    """Write ``payload`` to ``path`` as indented JSON (creating its folder); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def run_parent(
    measure: Callable[[], None],
    report: Callable[[], Json],
    *,
    plan: Json,
    children: object,
    results_path: Path,
    extra: Json | None = None,
) -> int:
    """A parent's whole run: mark it, measure, clean up, report, write the JSON.

    ``measure`` runs every child, filling ``children`` as they finish; a
    RuntimeError from it (or Ctrl-C) becomes the run's ``failure``. Then every
    process of the run must end: any left is killed by pid and named. Without
    a failure, ``report`` summarises and prints the tables and returns the
    summary (the payload's ``summary``). The payload (``plan``, ``machine``,
    the ``extra`` fields, ``wall_s``, ``children``, ``leftovers``,
    ``ray_leftovers``, ``failure``) goes to ``results_path``. Returns the exit
    code: 1 on a failure or leftovers, else 0.
    """
    mark = mark_run()
    bytecode = installed_bytecode()
    began = time.perf_counter()
    failure: str | None = None
    try:
        measure()
    except RuntimeError as exc:
        failure = str(exc)
    except KeyboardInterrupt:
        failure = "interrupted"
    leftovers = check_leftovers(mark)
    payload: Json = {
        "plan": plan,
        "machine": machine(),
        "bytecode": bytecode,
        **(extra or {}),
        "wall_s": time.perf_counter() - began,
        "children": children,
        "leftovers": leftovers,
        "ray_leftovers": ray_named(leftovers),
        "failure": failure,
    }
    path = write_json(results_path, payload)  # kept even if the report below fails
    if failure is None:
        payload["summary"] = report()
        write_json(results_path, payload)
    print(f"results: {path} (wall {payload['wall_s']:.0f} s, processes left: {len(leftovers)})")
    if leftovers:
        print("processes left behind (killed):\n  " + "\n  ".join(leftovers), file=sys.stderr)
    if failure is not None:
        print(f"benchmark failed: {failure}", file=sys.stderr)
    return 1 if failure or leftovers else 0


def child_or_parent(
    child: str | None, modes: Mapping[str, Callable[[], Json]], parent: Callable[[], int]
) -> int:
    """A script's entry: with ``--child MODE`` run that mode and emit its result; else ``parent``.

    Returns the exit code (0 for a child: a failing child raises).
    """
    if not child:
        return parent()
    emit(modes[child]())
    return 0


def rounds_parser(doc: str, quick: str) -> argparse.ArgumentParser:
    """The parser of a script run in rounds of children, from its docstring's first line.

    ``--rounds N`` (default: ``rounds_of``), ``--quick`` (one round; ``quick``
    says what else it cuts, as its help) and the children's hidden ``--child``.
    """
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None, help=f"rounds (default {ROUNDS})")
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return parser


def rounds_of(args: argparse.Namespace) -> int:
    """``--rounds``, else one round with ``--quick``, else ``ROUNDS``."""
    return int(args.rounds or (1 if args.quick else ROUNDS))


def rounds_main(
    argv: Sequence[str] | None,
    doc: str,
    quick: str,
    *,
    child: Callable[[str], Json],
    measure: Callable[[argparse.Namespace, int, list[Json]], None],
    report: Callable[[argparse.Namespace, list[Json]], Json],
    plan: Callable[[argparse.Namespace, int], Json],
    results_path: Path,
) -> int:
    """The entry of a script run in rounds of children (``rounds_parser``'s arguments).

    With ``--child MODE``: ``child(MODE)``'s result, emitted. Else the parent's
    run (``run_parent``): ``measure(args, rounds, children)`` runs the children
    and keeps their results, ``report(args, children)`` prints and returns the
    summary, ``plan(args, rounds)`` describes the run in its JSON at
    ``results_path``. Returns the exit code.
    """
    args = checked_args(rounds_parser(doc, quick), argv)
    if args.child:
        emit(child(args.child))
        return 0
    rounds = rounds_of(args)
    children: list[Json] = []
    return run_parent(
        lambda: measure(args, rounds, children),
        lambda: report(args, children),
        plan=plan(args, rounds),
        children=children,
        results_path=results_path,
    )


def medians_by_side(
    children: Sequence[Json], sides: Sequence[str], keys: Sequence[str], runs_of: str | None = None
) -> Json:
    """Each side's median of each of ``keys`` over its children (``runs``: their ``runs_of``)."""
    table: Json = {}
    for side in sides:
        mine = [c for c in children if c["side"] == side]
        table[side] = {key: statistics.median(c[key] for c in mine) for key in keys}
        if runs_of is not None:
            table[side]["runs"] = [c[runs_of] for c in mine]
    return table


def sides_in_turns(
    script: str,
    rounds: int,
    sides: Sequence[str],
    children: list[Json],
    said: Callable[[Json], str],
) -> None:
    """Each side once a round in a fresh child of ``script``, the order rotating (``in_turns``).

    Results go to ``children`` as they finish; ``said(result)`` is the
    progress line's text after ``round N SIDE:``.
    """
    for index in range(rounds):
        for side in in_turns(index, sides):
            result = spawn_child(script, side)
            children.append(result)
            progress(f"round {index + 1} {side}: {said(result)}")


def summarized(
    summarize: Callable[[Sequence[Json]], Json], show: Callable[[Json], None]
) -> Callable[[argparse.Namespace, list[Json]], Json]:
    """A ``report`` for ``rounds_main``: the children summarised, the summary shown and returned."""

    def report(_: argparse.Namespace, children: list[Json]) -> Json:
        summary = summarize(children)
        show(summary)
        return summary

    return report


def sides_main(
    argv: Sequence[str] | None,
    doc: str,
    *,
    script: str,
    sides: Sequence[str],
    said: Callable[[Json], str],
    child: Callable[[str], Json],
    summarize: Callable[[Sequence[Json]], Json],
    show: Callable[[Json], None],
    plan: Callable[[int], Json],
    results_path: Path,
) -> int:
    """``rounds_main`` for a script whose children are its sides, each once a round.

    ``--quick`` is one round; ``sides_in_turns`` runs them, ``summarized``
    reports, ``plan(rounds)`` describes the run.
    """
    return rounds_main(
        argv, doc, "1 round",
        child=child,
        measure=lambda _, rounds, children: sides_in_turns(script, rounds, sides, children, said),
        report=summarized(summarize, show),
        plan=lambda _, rounds: plan(rounds),
        results_path=results_path,
    )  # fmt: skip


def checked_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser.parse_args(argv)``; ``--rounds``, when given, must be >= 1."""
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be >= 1")
    return args


# --------------------------------------------------------------------------
# Reporting.
# --------------------------------------------------------------------------


def median_or_none(values: Sequence[float]) -> float | None:
    """The median, or None when there is no value."""
    return statistics.median(values) if values else None


def verdict(ok: bool) -> str:
    """A goal's verdict in Rich markup: a green ok or a red MISSED."""
    return "[green]ok[/]" if ok else "[bold red]MISSED[/]"


def table_console(width: int) -> Console:
    """The console for the tables: stdout; ``width`` columns when stdout is no terminal."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=width)
    return console
