"""The guard: the process that owns a worker's program and outlives its node agent.

Forked by the node agent's fork server (``_forkserver.py``), or run as
``_standalone.command("cmlray._guard", CTL_FD, OUT_FD, ERR_FD, CHANNEL_FD)``
when there is none. It forks once more and the first process exits, so the
guard is no child of the agent's Ray worker process: when that process
ends, Ray SIGKILLs its direct children, and a supervisor that is one cannot
clean up. The guard makes itself a child subreaper, so every process the
program starts stays below it, ``setsid`` daemons included.

Protocol on the control socket (JSON, one object a line):

- agent -> guard, first: ``{"argv", "env", "cwd", "grace_period_s",
  "memory_limit_bytes", "timeout_s", "cleanup_paths", "niceness"}``; later
  ``{"stop": grace_s, "status": "stopped"|"timedout"|..., "reason": text}``.
- guard -> agent: ``{"pid", "time"}`` once started, or ``{"error"}``; then
  ``{"usage": {"rss_bytes", "peak_rss_bytes", "cpu_s", "cores"}}`` when a
  sample changed the figures (every second while they change, less often
  while the program idles: ``_usage.next_interval_s``);
  ``{"exit_code", "reason", "status", "usage", "time"}`` when the program
  ended; ``{"done"}`` once every descendant is gone.

The program gets a private ``TMPDIR`` (a fresh directory below the one it
would have had), removed with everything in it once the program and all it
started have ended: as a CML engine's ``/tmp`` is its own and goes with it.
A program stopped or killed cleans up nothing itself: R, stopped, left its
``Rtmp*`` session directory in ``/tmp``, and so did each run of the test
suite's R workers that were stopped or over their memory.

The program gets the channel fd (its link to the agent, ``_channel.py``)
under the number named by ``CMLRAY_CHANNEL_FD``. When the control socket
closes (the agent died, whatever the cause), the guard stops the whole tree
and exits: this is what makes a worker's program and all it started end
with the session on every exit path.

It waits with ``poll``, never ``select``: an agent running hundreds of
workers hands out descriptor numbers past ``select``'s limit of 1024.

Standard library only (see ``_standalone.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import sys
import time

from cmlray import _proctree as proc
from cmlray import _usage as usage
from cmlray import _zygote
from cmlray._channel import CHANNEL_ENV

TYPE_CHECKING = False  # (the zygote imports this module as it boots: see _procfs.Stat)
if TYPE_CHECKING:
    from typing import Any

_LEFTOVER_GRACE_S = 2.0
_ORPHAN_GRACE_S = 3.0
_MEMORY_GRACE_S = 1.0
GIB = 1 << 30


def exceeded_words(used: int, limit: int) -> str:
    """The reason for a tree over its memory limit, its use shown visibly above the limit.

    Sampled as soon as it crosses, a tree is often just over: "used 0.25 GiB of
    0.25 GiB" would say nothing, so the use gets the decimals it needs (0.2502).
    """
    cap = f"{limit / GIB:.2f}"
    shown = f"{used / GIB:.2f}"
    for digits in range(3, 10):
        if float(shown) > float(cap):
            break
        shown = f"{used / GIB:.{digits}f}"
    return f"exceeded memory: used {shown} GiB of {cap} GiB"


class Guard:
    """Supervises one program; see the module docstring for the protocol."""

    def __init__(self, ctl: socket.socket) -> None:
        self.ctl = ctl
        self.buffer = b""
        self.program: Any = None
        self.exit_status: int | None = None
        self.final: dict[str, Any] | None = None
        self.terminated = False
        self.spec: dict[str, Any] = {}
        self.early: list[dict[str, Any]] = []
        self.started = time.monotonic()
        self.ended_at = time.time()
        self.meter = usage.UsageMeter(os.getpid())
        self.sample_due = time.monotonic()
        self.interval_s = usage.BASE_INTERVAL_S
        self.last_used, self.last_sampled = 0, time.monotonic()

    def send(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            self.ctl.sendall(json.dumps(message).encode() + b"\n")

    def read_messages(self) -> list[dict[str, Any]] | None:
        """Messages now readable on the control socket; None at EOF."""
        try:
            data = self.ctl.recv(16384)
        except OSError:
            data = b""
        if not data:
            return None
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]

    def read_spec(self) -> dict[str, Any] | None:
        while True:
            messages = self.read_messages()
            if messages is None:
                return None
            if messages:
                self.early = messages[1:]  # a stop sent right after the spec, in one read
                return messages[0]

    def record(self, reaped: dict[int, int]) -> None:
        if self.program is not None and self.program.pid in reaped:
            self.exit_status = reaped[self.program.pid]
            self.ended_at = time.time()

    def stop(self, grace_period_s: float, status: str, reason: str) -> None:
        self.final = {"status": status, "reason": reason}
        pgid = self.program.pid if self.program is not None else None
        proc.terminate_tree(os.getpid(), pgid, grace_period_s, self.record)

    def report_exit(self) -> None:
        assert self.exit_status is not None
        code, words = proc.describe_status(self.exit_status)
        if self.final is not None:
            status, reason = self.final["status"], self.final["reason"]
        elif code == 0:
            status, reason = "succeeded", "exit code 0"
        else:
            status, reason = "failed", words
        final = self.meter.final_report()
        self.send(
            {"exit_code": code, "status": status, "reason": reason, "time": self.ended_at}
            | {"usage": final}
        )

    def tick_s(self) -> float:
        """How long to wait for news before sampling the tree or checking the time limit."""
        now = time.monotonic()
        tick = max(0.0, self.sample_due - now) if self.final is None else 1.0
        timeout_s = self.spec.get("timeout_s")
        if timeout_s:
            tick = min(tick, max(0.0, self.started + float(timeout_s) - now))
        return tick

    def check_limits(self) -> None:
        """Stop the program when it ran too long; sample its tree when due (memory, usage).

        The pace (``_usage.next_interval_s``): every second while the figures
        change, up to every 4 s while they do not, sooner (down to a quarter
        second) while the tree grows towards its memory limit. A sample that
        changed the figures is sent to the agent.
        """
        timeout_s = self.spec.get("timeout_s")
        grace_s = float(self.spec.get("grace_period_s", 5.0))
        if timeout_s and time.monotonic() - self.started >= timeout_s:
            self.stop(grace_s, "timedout", f"timed out after {timeout_s:g} s")
            return
        now = time.monotonic()
        if now < self.sample_due:
            return
        used = self.meter.sample()
        limit = self.spec.get("memory_limit_bytes")
        if limit and used > limit:
            words = exceeded_words(used, limit)
            self.stop(min(grace_s, _MEMORY_GRACE_S), "failed", words)
            return
        report = self.meter.changed_report()
        if report is not None:
            self.send({"usage": report})
        growth = (used - self.last_used) / max(1e-3, now - self.last_sampled)
        self.last_used, self.last_sampled = used, now
        headroom = limit - used if limit else None
        self.interval_s = usage.next_interval_s(
            self.interval_s, report is not None, headroom, growth
        )
        self.sample_due = now + self.interval_s

    def obey(self, messages: list[dict[str, Any]]) -> None:
        """Carry out the stop requests among ``messages``."""
        for message in messages:
            if "stop" in message:
                self.stop(float(message["stop"]), message["status"], message["reason"])

    def serve(self, wake_fd: int) -> None:
        """Wait for the program to end, a stop request, a limit, or the agent's death."""
        self.obey(self.early)
        poller = select.poll()
        poller.register(self.ctl.fileno(), select.POLLIN)
        poller.register(wake_fd, select.POLLIN)
        while self.exit_status is None:
            readable = {fd for fd, _ in poller.poll(self.tick_s() * 1000)}
            if wake_fd in readable:
                _drain(wake_fd)
            self.record(proc.reap_children())
            if self.terminated and self.exit_status is None:
                self.stop(_ORPHAN_GRACE_S, "failed", "its guard was terminated (SIGTERM)")
                break
            if self.ctl.fileno() in readable and self.exit_status is None:
                messages = self.read_messages()
                if messages is None:
                    self.stop(_ORPHAN_GRACE_S, "failed", "its node agent died")
                    return
                self.obey(messages)
            if self.exit_status is None and self.final is None:
                self.check_limits()
        self.report_exit()
        proc.terminate_tree(os.getpid(), None, _LEFTOVER_GRACE_S, self.record)
        self.send({"done": True})


def _spawn_error(spec: dict[str, Any], exc: OSError) -> str:
    """Why the program could not start, naming what is really missing."""
    node = socket.gethostname()
    limit = proc.limit_error(exc)
    if limit is not None:
        return f"cannot start it on {node}: {limit}"
    if not os.path.isdir(spec["cwd"]):
        return f"cannot start it: its working directory {spec['cwd']!r} does not exist on {node}"
    return f"cannot start {spec['argv'][0]!r} on {node}: {exc.strerror or exc}"


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _detach(fork: bool) -> None:
    """Leave the agent's session (and, run as a script, its process too).

    Run as a script, the guard is a child of the agent's Ray worker process,
    which Ray's raylet SIGKILLs with its children: it forks, the parent
    returns at once, the child goes on. Forked by the fork server it is no
    child of the agent already. Either way it starts a session of its own
    and leaves the agent's working directory (inside Ray's temp dir).
    """
    if fork and os.fork() > 0:
        os._exit(0)
    os.setsid()
    os.chdir("/")


def _ignore(_signum: int, _frame: object) -> None:
    """A handler that does nothing: unlike SIG_IGN, a program's exec resets it."""


def main(argv: list[str], *, forked: bool = False) -> int:
    """Run the guard on the fds named by ``argv[1:]``: control, stdout, stderr, channel.

    ``forked``: started by the fork server (no second fork needed).
    """
    ctl_fd, out_fd, err_fd, *extra_fds = (int(arg) for arg in argv[1:])
    try:
        _detach(fork=not forked)
    except OSError as exc:  # fork refused: say why, on the socket the agent reads
        words = proc.limit_error(exc) or f"fork failed: {exc}"
        message = json.dumps({"error": f"cannot start its guard: {words}"}) + "\n"
        with contextlib.suppress(OSError):
            os.write(ctl_fd, message.encode())
        return 1
    proc.become_subreaper()
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _ignore)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda _s, _f: None)
    guard = Guard(socket.socket(fileno=ctl_fd))

    def on_sigterm(_signum: int, _frame: object) -> None:
        guard.terminated = True

    signal.signal(signal.SIGTERM, on_sigterm)
    spec = guard.read_spec()
    if spec is None:
        return 0
    guard.spec = spec
    private_tmp = _private_tmp(spec["env"])
    try:
        return _run(guard, spec, out_fd, err_fd, extra_fds, wake_r)
    finally:
        for path in spec.get("cleanup_paths", ()):
            with contextlib.suppress(OSError):
                os.unlink(path)
        if private_tmp is not None:
            remove_tree(private_tmp)


def _private_tmp(env: dict[str, str]) -> str | None:
    """Make the program's own ``TMPDIR`` below the one it would have had; set it in ``env``.

    None (``TMPDIR`` left as it was) when it cannot be made: the program
    still runs, as it would have.
    """
    base = env.get("TMPDIR") or "/tmp"
    # Short: a socket below it must stay within AF_UNIX's 107 bytes (a Ray started
    # there puts one 67 characters deep). Random too: a /tmp may be shared by
    # processes whose pids come from different namespaces.
    path = os.path.join(base, f"cmlray-w{os.getpid()}-{os.urandom(3).hex()}")
    try:
        os.mkdir(path, 0o700)
    except OSError:
        return None
    env["TMPDIR"] = path
    return path


def remove_tree(path: str) -> None:
    """Remove ``path`` and everything below it, as far as possible; links are not followed.

    ``shutil.rmtree(path, ignore_errors=True)``, as the head's reaper uses,
    without importing ``shutil`` in every guard (2.9 ms with what it imports).
    """
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(root, name))
        for name in dirs:
            full = os.path.join(root, name)
            with contextlib.suppress(OSError):
                if os.path.islink(full):
                    os.unlink(full)
                else:
                    os.rmdir(full)
    with contextlib.suppress(OSError):
        os.rmdir(path)


def _run(
    guard: Guard, spec: dict[str, Any], out_fd: int, err_fd: int, extra_fds: list[int], wake_r: int
) -> int:
    env = dict(spec["env"])
    if extra_fds:  # the program's channel to its agent
        env[CHANNEL_ENV] = str(extra_fds[0])
    forked = _zygote.ready() and _zygote.program_form(spec["argv"]) is not None
    start = _zygote.fork_program if forked else proc.spawn
    try:
        guard.program = start(
            spec["argv"],
            env=env,
            cwd=spec["cwd"],
            stdout_fd=out_fd,
            stderr_fd=err_fd,
            pass_fds=extra_fds[:1],
            niceness=spec.get("niceness"),
        )
    except OSError as exc:
        guard.send({"error": _spawn_error(spec, exc)})
        return 1
    finally:
        for fd in (out_fd, err_fd, *extra_fds):
            os.close(fd)
    guard.started = guard.sample_due = time.monotonic()
    guard.send({"pid": guard.program.pid, "time": time.time()})
    guard.serve(wake_r)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
