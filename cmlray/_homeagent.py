"""The own head's node agent as a child process of the session, not a Ray actor.

With its own head (``cmlray.init()`` without an address) every worker of a
session runs on the session's machine, under the agent of that node
(``_nodeagent.py``), and that agent needs nothing of Ray: the session's
calls and the agent's events already go on a local socket
(``_eventsocket.py``, ``_homecalls.py``); its programs, the queues it hosts
and the files they send home are all local. As a Ray actor it cost:

- the session's start: Ray holds the driver's connection until a Python
  worker has started for it (``import ray`` in a new interpreter), the one
  the agent then ran in: ``init`` 0.35 s without it instead of 1.0 s here;
- the runtime's floor beside the workers: a Ray worker's main thread wakes
  every 10 ms for Ray's signal check, its gRPC threads beside it: about
  10 ms of CPU a second (``benchmarks/runtime_floor.py``).

So the session starts it as ``python -c <bootstrap> cmlray._homeagent``
(the bootstrap of ``_standalone.py``, with the site-packages: it loads no
more than the standard library and cmlray, 0.1 s) before it starts its
head, so that both start at once (``start``), and later hands it what it
needs on its stdin (``begin``): the socket to connect to and its token,
its node, the variables its Python workers start with. The session's calls
wait on the socket until it is in (``HomeCalls.hold``).

Its end:

- the session closes: it sends the agent SIGTERM, the agent ends its fork
  server and zygotes and reaps them, then dies of the signal (its process
  group is killed if it has not within 2 s); each guard ends its program's
  tree once its agent's control socket closes;
- the session dies, however: its end of the socket closes, the agent ends
  its servers and exits; its working directory is in the head's temp dir,
  so the head's reaper (``_reaper.py``) ends whatever is left;
- the agent dies: the session reads the batches it wrote, then reports its
  workers failed with why it ended (its signal, or its exit code and the
  last line it wrote), and the next worker placed on the node gets a new one.

It runs at the niceness Ray gives its workers, below the workers' programs
(``_supervisor.program_niceness``) as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import IO, Any

from cmlray import _forkserver, _standalone
from cmlray._eventsocket import Address
from cmlray._homecalls import HomeCalls
from cmlray._launch import Where
from cmlray._rayerrors import Death, Kind, plain

AGENT_NICENESS = 15  # Ray's default for its workers (RAY_worker_niceness), as the actor had
TERM_WAIT_S = 2.0  # for the agent to end its servers and exit
KILL_WAIT_S = 5.0
LOG_TAIL_BYTES = 4096
_numbers = itertools.count(1)


@dataclass(eq=False)
class HomeProcess:
    """The session's side: the agent's process and where it writes."""

    proc: subprocess.Popen[bytes]
    work_dir: str  # where its replacements start too
    log_path: str
    killed: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def begin(self, address: Address, where: Where) -> None:
        """Tell the agent its session's socket and its node: it connects."""
        socket_path, token = address
        self.tell({"socket": socket_path, "token": token, "ip": where.ip, "node": where.node_id})
        with contextlib.suppress(OSError):
            self.stdin.close()

    @property
    def stdin(self) -> IO[bytes]:
        assert self.proc.stdin is not None
        return self.proc.stdin

    def tell(self, message: dict[str, Any]) -> None:
        """One line of the agent's spec on its stdin."""
        with contextlib.suppress(BrokenPipeError, ValueError):  # it died: its exit says why
            self.stdin.write(json.dumps(message).encode() + b"\n")
            self.stdin.flush()

    def end(self) -> None:
        """End the agent: it ends its fork server and zygotes and exits; reap it.

        SIGTERM first: the agent reaps its servers itself (orphaned, they
        would linger as zombies until the machine's init reaps them, and the
        head's reaper would wait for them). Its process group is killed if it
        has not exited within ``TERM_WAIT_S``.
        """
        if self.killed:  # (once: its group's id may be another's later)
            return
        self.killed = True
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(TERM_WAIT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(KILL_WAIT_S)

    def death(self) -> Death:
        """Why the agent ended (once it has): its signal, or its code and last words."""
        code = self.proc.wait()
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return Death(Kind.AGENT_DIED, f"its node's agent died ({name})")
        last = _last_line(self.log_path)
        said = f": {last}" if last else ""
        if code == 0:  # (it lost its session's socket)
            return Death(Kind.AGENT_DIED, f"its node's agent ended{said}")
        return Death(Kind.AGENT_FAILED, f"its node's agent failed (exit code {code}){said}")


def start(work_dir: str, startup_env: dict[str, str]) -> HomeProcess:
    """Start an agent's process; it starts its fork server and zygote, then waits for ``begin``.

    Started with an own head before ``ray.init`` (``_head.py``), so that its
    start and its zygote's (for Python workers started with ``startup_env``)
    overlap the head's. Raises OSError if it cannot start.
    """
    agent_dir = os.path.join(work_dir, f"home-agent-{next(_numbers)}")
    os.makedirs(agent_dir, exist_ok=True)
    log_path = os.path.join(agent_dir, "agent.log")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            _standalone.command("cmlray._homeagent", isolated=False),
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=agent_dir,
            start_new_session=True,  # its own process group: killed whole
            close_fds=True,
        )
    home = HomeProcess(proc, work_dir, log_path)
    home.tell({"startup_env": startup_env})
    return home


def call(agent: Any, calls: HomeCalls, method: str, *args: Any) -> Any:
    """``method(*args)`` on a node agent, not waited for: a Future on the socket of an agent
    that is a process (``HomeProcess``), else a Ray actor's ObjectRef (``_homecalls.result``)."""
    if isinstance(agent, HomeProcess):
        future = calls.call(None, method, args)
        assert future is not None  # (a process's calls never go through Ray)
        return future
    return getattr(agent, method).remote(*args)


async def exited(home: HomeProcess) -> None:
    """Wait until the agent's process has ended (on the session's loop)."""
    try:
        fd = os.pidfd_open(home.pid)
    except (AttributeError, OSError):  # no pidfd here, or already reaped
        await asyncio.to_thread(home.proc.wait)
        return
    loop = asyncio.get_running_loop()
    ended = loop.create_future()

    def readable() -> None:
        if not ended.done():
            ended.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await ended
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def _last_line(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - LOG_TAIL_BYTES))
            lines = f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return plain(lines[-1])[:300] if lines else ""


def main(stdin: IO[str] = sys.stdin) -> None:
    """The agent's side: read its spec, serve the session until it goes, end its servers."""
    signal.signal(signal.SIGTERM, _terminated)
    with contextlib.suppress(OSError):
        os.nice(AGENT_NICENESS - os.nice(0))
    from cmlray._nodeagent import NodeAgent

    line = stdin.readline()
    if not line:  # the session ended before it needed the agent
        return
    agent = NodeAgent(None, 0.0, json.loads(line)["startup_env"], False)
    warming = threading.Thread(target=agent.warm, name="cmlray-warm", daemon=True)
    warming.start()  # the fork server and zygote start while the head does
    line = stdin.readline()
    if line:
        spec: dict[str, Any] = json.loads(line)
        agent.locate(Where(spec["ip"], spec["node"]))
        why = asyncio.run(agent.serve_session((spec["socket"], spec["token"])))
        sys.stderr.write(f"cmlray home agent: {why}; exiting\n")
    _forkserver.close_all()  # each server ends as its socket closes: reaped here
    sys.stderr.flush()
    os._exit(0)


def _terminated(signum: int, frame: Any) -> None:
    """SIGTERM (the session's end, or anyone's): end the servers, then die of the signal."""
    _forkserver.close_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


if __name__ == "__main__":
    main()
