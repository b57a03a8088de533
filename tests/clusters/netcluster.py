"""A Ray cluster of three real hosts made of namespaces, for multi-host tests.

Hosts are network namespaces joined by a bridge (traffic goes only between
them: the bridge has no address in the root namespace), each with a mount
namespace of its own: a private ``/tmp``, and on the nodes the checkout and
the test venv hidden under empty read-only tmpfs, so a node cannot see
cmlray or the session's interpreter. Ray runs from a venv holding Ray alone
(``_rayonly``), started with ``ray start --block`` and token auth:

- ``h0``: the session host and Ray head (keeps the checkout and the test venv);
- ``h1``: a CPU node;
- ``h2``: a node declaring two GPUs and a ``gpu_host`` resource.

Use (the ``netcluster`` fixture of tests/conftest.py gives a started one)::

    project = netcluster.hosts["h0"].tmp_dir / "project"  # h0 sees it as /tmp/project
    done = netcluster.run("h0", [sys.executable, "driver.py", netcluster.address],
                          cwd=netcluster.host_path("h0", project))
    netcluster.partition("h1"); ...; netcluster.heal("h1")
    netcluster.crash("h2")  # SIGKILL every process of h2; start_ray("h2") restarts it

Needs root (CI runs as root); ``skip_reason()`` says why it cannot run.
Everything a run makes is removed by ``close()``, by an ``atexit`` hook, and,
if this process dies by any path, by a reaper process (see ``_netns_cleanup``); the
next run also sweeps leftovers of runs whose owner is dead.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.clusters import netns as _netns
from tests.clusters import netns_cleanup as _netns_cleanup
from tests.clusters import rayonly as _rayonly
from tests.clusters.rayonly import HostSpec

CHECKOUT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 180.0
MARK = "CMLRAY_NETCLUSTER"  # in the environment of every process a run starts


@dataclass(frozen=True)
class Host:
    """One running host: where it is and how to enter it."""

    name: str
    ip: str
    netns: str
    mnt_file: Path
    tmp_dir: Path  # its /tmp, as seen from the root namespace (logs live here)
    spec: HostSpec


def skip_reason() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "the namespace cluster needs root (CI runs as root)"
    missing = [tool for tool in ("ip", "nsenter", "unshare", "mount") if not shutil.which(tool)]
    if missing:
        return f"the namespace cluster needs {', '.join(missing)} on PATH"
    probe = f"{_netns.PREFIX}probe{os.getpid()}"[:15]
    made = _netns.ip("netns", "add", probe, check=False)
    _netns.ip("netns", "del", probe, check=False)
    if made.returncode != 0:
        return f"cannot make network namespaces here: {made.stderr.strip()}"
    return None


class NamespaceCluster:
    """A head and nodes on hosts made of namespaces; use as a context manager."""

    def __init__(
        self,
        specs: tuple[HostSpec, ...] = _rayonly.DEFAULT_HOSTS,
        ray_env: dict[str, str] | None = None,
        hidden: list[Path] | None = None,
        extras: tuple[str, ...] = (),
    ) -> None:
        """Names a cluster; ``start()`` makes it.

        Args:
            specs: The hosts; the first is the session host and Ray head.
            ray_env: Environment for every ``ray start`` (Ray's ``RAY_<config>``
                variables); default ``FAST_FAULT_DETECTION``.
            hidden: Directories the nodes must not see; default the checkout
                and the test venv (``sys.prefix``).
            extras: Requirements the nodes' venv has besides Ray (the
                libraries a user's workers import; never cmlray).
        """
        self.extras = extras
        self.hidden = _outermost(hidden or [CHECKOUT, Path(sys.prefix)])
        self.ray_env = _rayonly.FAST_FAULT_DETECTION if ray_env is None else ray_env
        self.run_id = secrets.token_hex(3)
        self.layout = _netns.Layout(self.run_id, tuple(s.name for s in specs))
        self.specs = specs
        self.hosts: dict[str, Host] = {}
        self.venv = Path()
        self.token_path = self.layout.run_dir / "auth" / "token"
        self._popens: list[subprocess.Popen[Any]] = []
        self._ray: dict[str, subprocess.Popen[Any]] = {}
        self._reaper: subprocess.Popen[bytes] | None = None
        self.start_s = 0.0

    @property
    def head(self) -> Host:
        return self.hosts[self.specs[0].name]

    @property
    def address(self) -> str:
        """The head's GCS address, ``ip:port``, as ``ray.init(address=...)`` takes it."""
        return f"{self.head.ip}:{_rayonly.HEAD_PORT}"

    def __enter__(self) -> NamespaceCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Builds the hosts, starts Ray on each and waits for every node to be alive."""
        started = time.monotonic()
        _netns_cleanup.sweep()
        self.venv = _rayonly.ray_only_venv(self.extras)
        atexit.register(self.close)
        try:
            self._make_hosts()
            for spec in self.specs:
                self.start_ray(spec.name)
            self.wait_nodes(len(self.specs))
        except BaseException:
            self.close()
            raise
        self.start_s = time.monotonic() - started

    def _make_hosts(self) -> None:
        subnet = _netns.free_subnet()
        _netns.create_run(self.layout)
        self._reaper = subprocess.Popen(
            [sys.executable, "-m", "tests.clusters.netns_cleanup", "reap", self.run_id],
            stdin=subprocess.PIPE,
            cwd=CHECKOUT,
            env=_clean_env({}),
            start_new_session=True,
        )
        self.token_path.parent.mkdir(mode=0o700)
        self.token_path.touch(mode=0o600)
        self.token_path.write_text(secrets.token_hex(32))
        for index, spec in enumerate(self.specs):
            if len(self.layout.veth(spec.name)) > 14:
                raise ValueError(f"host name {spec.name!r} too long for a link name")
            address = str(subnet[index + 1])
            hidden = [] if spec.sees_checkout else self.hidden
            kept = self.hidden if spec.sees_checkout else []
            _netns.add_host(self.layout, spec.name, address, subnet.prefixlen, hidden, kept)
            self.hosts[spec.name] = Host(
                spec.name,
                address,
                self.layout.netns(spec.name),
                self.layout.mnt_file(spec.name),
                self.layout.tmp_dir(spec.name),
                spec,
            )

    def start_ray(self, name: str) -> None:
        """``ray start --block`` on one host (again after ``crash``); output in its /tmp."""
        host = self.hosts[name]
        spec = host.spec
        head = None if spec is self.specs[0] else self.address
        argv = _rayonly.ray_start_argv(self.venv, spec, host.ip, head)
        env = self._node_env() | self.ray_env
        with open(host.tmp_dir / "ray-start.log", "ab") as log:
            proc = subprocess.Popen(
                self.enter_argv(spec.name, "/tmp") + argv,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._popens.append(proc)
        self._ray[spec.name] = proc

    def env(self, host: str) -> dict[str, str]:
        """The environment a command gets on ``host``: token auth on, this run's mark.

        The session host gets this process's environment (the test venv, the
        leak mark of tests/conftest.py); nodes get a clean one with the
        Ray-only venv first on PATH, as on a machine with Ray installed.
        """
        if self.hosts[host].spec.sees_checkout:
            base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
            return base | self._auth_env()
        return self._node_env()

    def _node_env(self) -> dict[str, str]:
        """A node's environment: a clean one, the Ray-only venv first on PATH, auth on."""
        path = f"{self.venv / 'bin'}:/usr/local/bin:/usr/bin:/bin"
        return _clean_env({"PATH": path} | self._auth_env())

    def _auth_env(self) -> dict[str, str]:
        return {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token_path),
            MARK: self.run_id,
        }

    def popen(
        self,
        host: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        **kwargs: Any,
    ) -> subprocess.Popen[Any]:
        """Starts ``argv`` inside ``host`` (its network and mount namespaces).

        Args:
            host: The host's name.
            argv: The command (paths as the host sees them).
            env: Added to (overriding) ``env(host)``.
            cwd: Working directory inside the host (default: the checkout
                on the session host, / on nodes).
            **kwargs: Passed to ``subprocess.Popen``.
        """
        spec = self.hosts[host].spec
        workdir = cwd or (str(CHECKOUT) if spec.sees_checkout else "/")
        proc = subprocess.Popen(
            self.enter_argv(host, workdir) + argv, env={**self.env(host), **(env or {})}, **kwargs
        )
        self._popens.append(proc)
        return proc

    def enter_argv(self, host: str, cwd: str = "/") -> list[str]:
        """The ``nsenter`` prefix that runs a command inside ``host``, in ``cwd`` there.

        nsenter's own ``--wd`` opens the directory before it enters the mount
        namespace (so a host's private /tmp would not be found): ``env -C``
        changes into it once inside.
        """
        h = self.hosts[host]
        enter = ["nsenter", f"--net=/run/netns/{h.netns}", f"--mount={h.mnt_file}", "--wd=/"]
        return [*enter, "env", "-C", cwd]

    def run(
        self, host: str, argv: list[str], timeout_s: float = 120.0, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """Runs ``argv`` inside ``host`` to its end; output captured as text."""
        proc = self.popen(host, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise
        return subprocess.CompletedProcess(argv, proc.returncode, _text(out), _text(err))

    def ray_python(self, host: str) -> str:
        """The interpreter that has Ray on ``host``: the test venv's on the session host."""
        return sys.executable if self.hosts[host].spec.sees_checkout else self.python_rayonly

    @property
    def python_rayonly(self) -> str:
        return str(self.venv / "bin" / "python")

    def nodes(self) -> list[dict[str, Any]]:
        """Ray's alive nodes, as a driver on the head's host sees them (``ray.nodes()``)."""
        return self.wait_nodes(0, 60.0)

    def wait_nodes(self, count: int, timeout_s: float = START_TIMEOUT_S) -> list[dict[str, Any]]:
        """Waits until exactly ``count`` nodes are alive (0: any) and returns them.

        A driver on the head host polls ``ray.nodes()``; meanwhile a
        ``ray start`` that exits fails the wait at once, with its output.

        Raises:
            RuntimeError: at the deadline, or when a ``ray start`` exits.
        """
        probe = self.popen(
            self.head.name,
            [
                self.python_rayonly,
                "-c",
                _rayonly.NODES_PROBE,
                self.address,
                str(count),
                str(timeout_s),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd="/tmp",
        )
        try:
            while probe.poll() is None:
                dead = [n for n, p in self._ray.items() if p.poll() is not None]
                if dead:
                    raise RuntimeError(f"ray start exited on {dead[0]}: {self.ray_log(dead[0])}")
                time.sleep(0.1)
        finally:
            if probe.poll() is None:
                probe.kill()
            out, err = probe.communicate()
        if probe.returncode != 0:
            logs = "\n".join(f"--- {n}:\n{self.ray_log(n)}" for n in self.hosts)
            raise RuntimeError(f"waiting for {count} nodes failed: {_text(err)[-3000:]}\n{logs}")
        return json.loads(_text(out).strip().splitlines()[-1])  # type: ignore[no-any-return]

    def host_path(self, host: str, path: Path) -> str:
        """Where ``host`` sees ``path``: under its ``tmp_dir``, it is in its /tmp.

        A test makes files for a host (a project, a driver script) in
        ``hosts[host].tmp_dir`` and passes ``host_path(...)`` to commands
        there; paths elsewhere are returned unchanged.
        """
        tmp = self.hosts[host].tmp_dir
        if path.is_relative_to(tmp):
            return str(Path("/tmp") / path.relative_to(tmp))
        return str(path)

    def ray_log(self, host: str) -> str:
        """The tail of ``ray start``'s output on ``host``."""
        with contextlib.suppress(OSError):
            return (self.hosts[host].tmp_dir / "ray-start.log").read_text()[-3000:]
        return ""

    def pids(self, host: str) -> list[int]:
        """Pids of every live process on ``host``."""
        return _netns.netns_pids(self.hosts[host].netns)

    def processes_matching(self, host: str, pattern: str) -> list[tuple[int, str]]:
        """(pid, command line) of the processes on ``host`` whose command line contains ``pattern``."""
        found = [(pid, _netns.cmdline(pid)) for pid in self.pids(host)]
        return [(pid, line) for pid, line in found if pattern in line]

    def memory_bytes(self, host: str) -> int:
        """Proportional memory (PSS) of every process on ``host``, in bytes."""
        return sum(_netns.pss_bytes(pid) for pid in self.pids(host))

    def crash(self, host: str) -> None:
        """SIGKILLs every process on ``host`` at once, as a power cut would."""
        left = _netns_cleanup.kill_netns(self.hosts[host].netns)
        self._ray.pop(host, None)  # its ray start is gone on purpose
        if left:
            raise RuntimeError(f"processes survived SIGKILL on {host}: {left}")
        self._reap_popens()

    def partition(self, host: str) -> None:
        """Cuts ``host`` off the network: its link on the bridge goes down."""
        _netns.ip("link", "set", self.layout.veth(host), "down")

    def heal(self, host: str) -> None:
        """Restores the link ``partition`` cut."""
        _netns.ip("link", "set", self.layout.veth(host), "up")

    def close(self) -> None:
        """Removes every process, namespace, link and dir of this run; idempotent.

        Raises:
            RuntimeError: if something could not be removed (it says what).
        """
        atexit.unregister(self.close)
        problems = _netns_cleanup.teardown(self.layout)
        self._reap_popens()
        if self._reaper is not None:
            with contextlib.suppress(OSError):
                self._reaper.stdin.close()  # type: ignore[union-attr]
            self._reaper.wait(timeout=60)
            self._reaper = None
        if problems:
            raise RuntimeError("netcluster teardown left: " + "; ".join(problems))

    def leftovers(self) -> list[str]:
        """Everything of this run still on the machine (empty after ``close()``)."""
        left = _netns_cleanup.leftovers(self.layout)
        pids = _netns.marked_pids(f"{MARK}={self.run_id}")
        return left + [f"process {pid} {_netns.cmdline(pid)[:150]}" for pid in pids]

    def _reap_popens(self) -> None:
        """Collects the exit status of the processes this object started that ended."""
        # A killed child stays a zombie until polled; the namespace no longer lists it.
        self._popens = [p for p in self._popens if p.poll() is None]


def _outermost(paths: list[Path]) -> list[Path]:
    """The existing directories among ``paths``, without those inside another."""
    paths = sorted({p.resolve() for p in paths}, key=lambda p: len(p.parts))
    kept: list[Path] = []
    for path in paths:
        if path.is_dir() and not any(path.is_relative_to(k) for k in kept):
            kept.append(path)
    return kept


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    """A minimal environment, as a service on a fresh machine would get."""
    keep = ("HOME", "LANG", "LC_ALL", "TERM", "USER", "LOGNAME")
    base = {k: os.environ[k] for k in keep if k in os.environ}
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", **base, **extra}


def _text(data: str | bytes | None) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data or ""


@contextlib.contextmanager
def cluster_fixture(extras: tuple[str, ...] = ()) -> Iterator[NamespaceCluster]:
    """The body of the ``netcluster`` fixture: a started cluster, or a skip."""
    import pytest

    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    cluster = NamespaceCluster(extras=extras)
    with cluster:
        yield cluster
    left = cluster.leftovers()
    assert not left, "the namespace cluster left: " + "; ".join(left)
