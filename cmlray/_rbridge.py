"""The R package's Python side: one cmlray session, driven by R over pipes.

``library("cmlray")`` in R starts ``python -m cmlray._rbridge`` once per R
session, as R's own child, instead of embedding Python in R (the reasons,
measured, are in ``r/README.md``). The protocol is one JSON object a line:

- R to the bridge, on its stdin: ``{"id": 7, "op": "launch_workers",
  "args": {...}}``; ``{"op": "abandon", "id": 7}`` when the user
  interrupted call 7.
- The bridge to R, on ``--reply-fd`` (a FIFO R reads): first
  ``{"ready": true, "pid": ..., "version": ...}``, then for each call
  ``{"id": 7, "ok": true, "value": ..., "warnings": [...]}`` or
  ``{"id": 7, "ok": false, "error": "ValueError", "message": "cpu must ..."}``,
  preceded by ``{"id": 7, "pending": true}`` lines while it waits.

Workers' output goes to the bridge's stdout and stderr, which are R's own:
the relay writes straight to R's file descriptors, so lines appear while R is
busy or blocked in C code (a ``socketConnection`` accept, say).

Calls that wait (``await_workers``, ``stop_workers``) run on threads of
their own and send keepalive lines meanwhile (see ``Waits``), so Ctrl-C in R
interrupts them; an interrupted call's wait is left behind, and the next
calls are served at once. Calls that may start the session run on the main
thread, where Ray wants its signal handlers.

Lifetime: the bridge ends its session (``cmlray.shutdown()``: workers
stopped, its own head ended) and exits when its stdin reaches EOF, which
happens when R closes the pipe or dies by any path. A SIGKILLed R also
sends it SIGHUP (``PR_SET_PDEATHSIG``), in case a child of R still holds
the pipe open. It runs in a session of its own, so a Ctrl-C in R's
terminal interrupts R, not the bridge and its Ray.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import inspect
import json
import os
import queue
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import cmlray
from cmlray._api import StopResult, launch_workers

PR_SET_PDEATHSIG = 1
# What an R call may pass to launch_workers: all of it but fn= and its arguments
# (R has no Python callables).
LAUNCH_ARGUMENTS = frozenset(inspect.signature(launch_workers).parameters) - {
    "fn",
    "args",
    "kwargs",
}
INIT_ARGUMENTS = frozenset({"address", "num_cpus", "num_gpus", "project_dir", "log_dir"})
_EOF = None
KEEPALIVE_S = 0.25
ENDING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class ReplyWriter:
    """Writes reply lines to R's FIFO, one whole line per write, from any thread."""

    def __init__(self, fd: int) -> None:
        os.set_inheritable(fd, False)  # Ray's processes must not keep R's reply pipe open
        self._fd = fd
        self._lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        data = (json.dumps(message, default=str) + "\n").encode()
        with self._lock:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]


def _checked(args: dict[str, Any], allowed: frozenset[str], function: str) -> dict[str, Any]:
    unknown = sorted(set(args) - allowed)
    if unknown:
        raise TypeError(f"{function} got an unexpected argument {unknown[0]!r}")
    return args


def _stop_result(result: StopResult) -> dict[str, Any]:
    return {
        "id": result.id,
        "status_code": result.status_code,
        "status": result.status,
        "worker": result.worker,
    }


def _launch(args: dict[str, Any]) -> Any:
    return cmlray.launch_workers(**_checked(args, LAUNCH_ARGUMENTS, "launch.workers"))


def _init(args: dict[str, Any]) -> Any:
    cmlray.init(**_checked(args, INIT_ARGUMENTS, "cmlray.init"))
    return None


def _stop(args: dict[str, Any]) -> Any:
    ids = args.get("ids") or []
    grace = args.get("grace_period_s")
    return [_stop_result(r) for r in cmlray.stop_workers(*ids, grace_period_s=grace)]


def _await(args: dict[str, Any]) -> Any:
    return cmlray.await_workers(
        args.get("ids"),
        wait_for_completion=bool(args.get("wait_for_completion", True)),
        timeout_seconds=args.get("timeout_seconds", 60),
    )


def _shutdown(args: dict[str, Any]) -> Any:
    cmlray.shutdown()
    return None


OPS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "init": _init,
    "launch_workers": _launch,
    "list_workers": lambda _args: cmlray.list_workers(),
    "stop_workers": _stop,
    "await_workers": _await,
    "shutdown": _shutdown,
}
# Calls that may wait long: each runs on a thread of its own.
WAITING_OPS = frozenset({"stop_workers", "await_workers"})


def answer(request: dict[str, Any]) -> dict[str, Any]:
    """Run one request; its reply, errors included (they become R errors)."""
    reply: dict[str, Any] = {"id": request.get("id")}
    op = request.get("op")
    if "invalid" in request:
        return {**reply, "ok": False, "error": "ValueError", "message": request["invalid"]}
    if not isinstance(op, str) or op not in OPS:
        return {**reply, "ok": False, "error": "ValueError", "message": f"unknown op {op!r}"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            reply["value"] = OPS[op](dict(request.get("args") or {}))
            reply["ok"] = True
        except Exception as exc:
            reply.update(ok=False, error=type(exc).__name__, message=str(exc))
    reply["warnings"] = [str(w.message) for w in caught]
    return reply


def _read_requests(requests: queue.Queue[dict[str, Any] | None]) -> None:
    """Stdin lines to the queue; EOF (R closed the pipe, or died) ends the bridge."""
    for line in sys.stdin.buffer:
        if not line.strip():
            continue
        try:
            requests.put(json.loads(line))
        except ValueError as exc:
            requests.put({"id": None, "invalid": f"a request that is not JSON: {exc}"})
    requests.put(_EOF)


class Waits:
    """Calls that wait, each on a thread of its own, with keepalive lines for R.

    R blocks in a read of its FIFO while it waits for a reply, and R only
    acts on Ctrl-C between two R-level steps: a keepalive line every
    ``KEEPALIVE_S`` gives it those steps, so a long ``await.workers`` stays
    interruptible. R then sends ``{"op": "abandon", "id": ...}``: the wait
    goes on (a thread costs nothing) but sends nothing more.
    """

    def __init__(self, replies: ReplyWriter) -> None:
        self._replies = replies
        self._abandoned: set[object] = set()

    def start(self, request: dict[str, Any]) -> None:
        threading.Thread(target=self._run, args=(request,), daemon=True).start()

    def abandon(self, request_id: object) -> None:
        self._abandoned.add(request_id)

    def _run(self, request: dict[str, Any]) -> None:
        request_id = request.get("id")
        done = threading.Event()
        threading.Thread(target=self._keepalive, args=(request_id, done), daemon=True).start()
        try:
            reply = answer(request)
        finally:
            done.set()
        if request_id not in self._abandoned:
            self._replies.send(reply)

    def _keepalive(self, request_id: object, done: threading.Event) -> None:
        while not done.wait(KEEPALIVE_S) and request_id not in self._abandoned:
            self._replies.send({"id": request_id, "pending": True})


def serve(replies: ReplyWriter) -> None:
    """Answer R's requests until R goes away."""
    requests: queue.Queue[dict[str, Any] | None] = queue.Queue()
    threading.Thread(target=_read_requests, args=(requests,), daemon=True).start()
    waits = Waits(replies)
    while (request := requests.get()) is not _EOF:
        op = str(request.get("op"))
        if op == "abandon":
            waits.abandon(request.get("id"))
        elif op in WAITING_OPS:
            waits.start(request)
        else:
            replies.send(answer(request))


def _tie_to_parent(parent_pid: int) -> None:
    """SIGHUP when R dies; exit now if it already has.

    SIGHUP rather than SIGTERM: Ray's core logs a stack trace on SIGTERM, and
    in a session of its own the bridge gets no other SIGHUP.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGHUP, 0, 0, 0)
    if parent_pid and os.getppid() != parent_pid:
        raise SystemExit("cmlray bridge: its R session is already gone")


def _on_signal(signum: int, frame: object) -> None:
    for ending in ENDING_SIGNALS:  # once: the shutdown must not be interrupted
        signal.signal(ending, signal.SIG_IGN)
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve one R session; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m cmlray._rbridge")
    parser.add_argument("--reply-fd", type=int, required=True)
    parser.add_argument("--parent-pid", type=int, default=0)
    options = parser.parse_args(argv)
    with contextlib.suppress(OSError):
        os.setsid()  # out of R's terminal's process group: Ctrl-C is for R
    for ending in ENDING_SIGNALS:
        signal.signal(ending, _on_signal)
    _tie_to_parent(options.parent_pid)
    replies = ReplyWriter(options.reply_fd)
    replies.send({"ready": True, "pid": os.getpid(), "version": cmlray.__version__})
    try:
        serve(replies)
    finally:
        for ending in ENDING_SIGNALS:
            signal.signal(ending, signal.SIG_IGN)
        cmlray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
