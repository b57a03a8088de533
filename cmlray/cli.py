"""The ``cmlray`` command: run workers from a shell, in the foreground.

``cmlray launch -n 2 --cpu 0.5 --memory 0.5 --code "print('hi')"`` starts a
session, launches the workers, streams their output, waits for them and
exits 0 when every one succeeded (1 otherwise). Ctrl-C stops every worker
and exits with status 130. On a terminal a live table of the workers (status,
run time, CPU, memory, last line) stays under their scrolling output until
they end (``--no-table`` turns it off); ``--logs NAME`` prints a worker's
whole output at the end.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

import cmlray
from cmlray import _lifecycle, _watch
from cmlray._sanitize import strip_escapes
from cmlray._spec import WorkerSpec

EXIT_INTERRUPTED = 130
_USAGE_COLUMNS_WIDTH = 100  # narrower, the usage columns would squeeze the statuses


def _env_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--env takes NAME=VALUE, got {text!r}")
    return name, value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cmlray",
        description="Cloudera ML's Workers API on Ray: launch workers from any shell.",
    )
    parser.add_argument("--version", action="version", version=f"cmlray {cmlray.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    launch = commands.add_parser(
        "launch",
        help="launch workers, stream their output, wait for them",
        description="Launch N workers running a script, Python code or a command; stream "
        "their output; exit 0 when all succeeded, 1 otherwise; Ctrl-C stops them all.",
        epilog="examples:\n"
        "  cmlray launch -n 2 --cpu 0.5 --memory 0.5 --code \"print('hello')\"\n"
        "  cmlray launch -n 4 --cpu 1 --memory 2 --script train.py --env SEED=1\n"
        "  cmlray launch -n 2 --cpu 1 --memory 1 -- sh -c 'echo $CDSW_ENGINE_ID'\n"
        "  cmlray launch -n 8 --cpu 1 --memory 1 --script sweep.py --logs worker-3",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    launch.add_argument("-n", type=int, required=True, help="number of workers")
    launch.add_argument("--cpu", type=_number, required=True, help="cores per worker")
    launch.add_argument("--memory", type=_number, required=True, help="GiB per worker")
    launch.add_argument("--gpu", type=int, default=0, help="GPUs per worker (default 0)")
    launch.add_argument("--env", type=_env_pair, action="append", default=[], metavar="K=V")
    launch.add_argument("--name", help="the workers' name (default worker-<k>)")
    launch.add_argument("--address", help="attach to this Ray cluster instead of starting one")
    launch.add_argument(
        "--grace", type=_number, default=5.0, help="seconds from SIGTERM to SIGKILL"
    )
    launch.add_argument(
        "--timeout", type=_number, default=0.0, help="give up waiting after S seconds (0: never)"
    )
    launch.add_argument(
        "--table",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a live table of the workers under their output (default: on a terminal)",
    )
    launch.add_argument(
        "--logs",
        action="append",
        default=[],
        metavar="NAME",
        help="at the end, print this worker's whole output (name or id; repeatable)",
    )
    program = launch.add_mutually_exclusive_group()
    program.add_argument("--script", help="a Python file to run")
    program.add_argument("--code", help="Python code to run ('!cmd' for a shell command)")
    launch.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...: a command")
    return parser


def _program(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, str]:
    command = args.command_args
    given = [bool(args.script), bool(args.code), bool(command)]
    if sum(given) != 1:
        parser.error("give exactly one of --script FILE, --code CODE or -- COMMAND ARGS...")
    if command:
        return {"code": "!" + shlex.join(command)}
    return {"script": args.script} if args.script else {"code": args.code}


def _summary(workers: Sequence[dict[str, Any]], width: int) -> Table:
    """The final table; with CPU seconds and peak memory where the console is wide enough."""
    usage = width >= _USAGE_COLUMNS_WIDTH
    table = Table(title="workers", title_justify="left")
    columns = ["name", "id", "status", "exit", "seconds"]
    columns += ["cpu s", "peak GiB"] if usage else []
    for column in [*columns, "reason"]:
        table.add_column(column)
    for worker in workers:
        style = "green" if worker["status"] == "succeeded" else "red"
        cells: list[Any] = [
            Text(worker["name"]),
            worker["id"],
            f"[{style}]{worker['status']}[/]",
            str(worker["exit_code"]),
            f"{worker['duration']:.2f}" if worker["duration"] is not None else "-",
        ]
        if usage:
            cells += [_figure(worker.get("cpu_seconds")), _figure(worker.get("memory_peak"))]
        table.add_row(*cells, Text(worker["reason"] or ""))
    return table


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _print_logs(names: Sequence[str], console: Console) -> None:
    """Each named worker's whole output, under a rule naming it."""
    for name in names:
        try:
            text = cmlray.logs(name)
        except ValueError as exc:
            console.print(Text(f"cmlray: --logs: {exc}", style="yellow"))
            continue
        console.rule(Text(f"log of {name}"))
        console.print(Text(strip_escapes(text)), end="", soft_wrap=True)


def _wait(args: argparse.Namespace, workers: list[dict[str, Any]], console: Console) -> Any:
    """Wait for the workers (under a live table if wanted); ``await_workers``' answer."""
    show_table = console.is_terminal if args.table is None else args.table
    if not show_table:
        return cmlray.await_workers(workers, timeout_seconds=args.timeout)
    ids = [w["id"] for w in workers]
    done = _watch.follow(
        _lifecycle.require(),
        lambda: ids,
        console,
        _watch.REFRESH_S,
        timeout_s=args.timeout or None,
        transient=True,
    )
    # Decided (or out of time): await_workers only sorts them into its two lists.
    return cmlray.await_workers(workers, timeout_seconds=0 if done else 1e-3)


def _launch_arguments(args: argparse.Namespace, program: dict[str, str]) -> dict[str, Any]:
    """``launch_workers``' arguments, validated before any session starts."""
    arguments: dict[str, Any] = {
        "n": args.n,
        "cpu": args.cpu,
        "memory": args.memory,
        "nvidia_gpu": args.gpu,
        "env": dict(args.env),
        "name": args.name,
        "grace_period_s": args.grace,
        "script": program.get("script", ""),
        "code": program.get("code", ""),
    }
    WorkerSpec.from_call(os.getcwd(), kernel="python3", **arguments)
    return arguments


def launch(args: argparse.Namespace, arguments: dict[str, Any], console: Console) -> int:
    """Run one launch in the foreground; returns the process's exit status."""
    cmlray.init(address=args.address, console=console)
    try:
        workers = cmlray.launch_workers(**arguments)
        result = _wait(args, workers, console)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: stopping every worker[/]")
        cmlray.stop_workers()
        console.print(_summary(cmlray.list_workers(), console.width))
        return EXIT_INTERRUPTED
    finally:
        pending = [w["id"] for w in cmlray.list_workers() if w["finished_at"] is None]
        if pending:
            cmlray.stop_workers(*pending)
    _print_logs(args.logs, console)
    console.print(_summary(result["workers"] + result["failures"], console.width))
    return 0 if not result["failures"] else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cmlray`` console script."""
    parser = build_parser()
    raw = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in raw:  # everything after -- is the worker's command, verbatim
        cut = raw.index("--")
        raw, command = raw[:cut], raw[cut + 1 :]
    args = parser.parse_args(raw)
    args.command_args = command or [c for c in args.command if c != "--"]
    program = _program(parser, args)
    console = Console()
    try:
        arguments = _launch_arguments(args, program)
        return launch(args, arguments, console)
    except (TypeError, ValueError, cmlray.CmlrayError) as exc:
        Console(stderr=True).print(Text.assemble(("cmlray: error: ", "bold red"), str(exc)))
        return 2
    finally:
        cmlray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
