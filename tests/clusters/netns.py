"""Hosts made of Linux namespaces: names, creation, process queries (root only).

One run of the test cluster owns a 6-hex run id. Everything it makes is named
from that id alone, so teardown needs no other state and is idempotent:

- ``/run/cmlr-<id>/``: the run dir (mode 0700): ``owner`` (pid and start
  time of the owning process), ``hosts``, the auth token, and ``mnt/<host>``,
  the bind-mounted mount namespace of each host (as ``ip netns`` does for
  network namespaces), which keeps it alive between commands;
- ``/var/tmp/cmlr-<id>/<host>/tmp``: each host's private ``/tmp``;
- network namespaces ``cmlr-<id>-<host>``, a bridge ``cmlr-<id>`` with no
  address in the root namespace (so nothing routes out of the cluster), and
  veth pairs ``cmlr-<id>-<host>`` (root side) / ``eth0`` (host side).

Stdlib only (the reaper in ``_netns_cleanup`` imports it); teardown lives there.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
import subprocess
from pathlib import Path

PREFIX = "cmlr-"
RUN_ROOT = Path("/run")
DATA_ROOT = Path("/var/tmp")
RUN_ID = re.compile(r"cmlr-([0-9a-f]{6})(?:-|$)")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Runs ``ip <args>``; raises with its stderr when it fails and ``check``."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


class Layout:
    """The names of everything one run makes, derived from its run id."""

    def __init__(self, run_id: str, hosts: tuple[str, ...]) -> None:
        self.run_id = run_id
        self.hosts = hosts

    @classmethod
    def load(cls, run_id: str) -> Layout:
        """The layout of an existing run, from its run dir (hosts may be unknown)."""
        hosts_file = RUN_ROOT / f"{PREFIX}{run_id}" / "hosts"
        try:
            hosts = tuple(hosts_file.read_text().split())
        except OSError:
            hosts = ()
        return cls(run_id, hosts)

    @property
    def run_dir(self) -> Path:
        return RUN_ROOT / f"{PREFIX}{self.run_id}"

    @property
    def data_dir(self) -> Path:
        return DATA_ROOT / f"{PREFIX}{self.run_id}"

    @property
    def bridge(self) -> str:
        return f"{PREFIX}{self.run_id}"

    def netns(self, host: str) -> str:
        return f"{PREFIX}{self.run_id}-{host}"

    def veth(self, host: str) -> str:
        """The root-namespace end of the host's link (at most 15 characters)."""
        return f"{PREFIX}{self.run_id}-{host}"

    def mnt_file(self, host: str) -> Path:
        return self.run_dir / "mnt" / host

    def tmp_dir(self, host: str) -> Path:
        """The host's private /tmp, as the root namespace sees it."""
        return self.data_dir / host / "tmp"


def create_run(layout: Layout) -> None:
    """Makes the run dir (atomically, owner recorded) and the bridge.

    The run dir appears complete or not at all, so a concurrent sweep never
    mistakes a run being created for one whose owner died.
    """
    staging = RUN_ROOT / f".{PREFIX}{layout.run_id}.new"
    staging.mkdir(mode=0o700)
    (staging / "owner").write_text(f"{os.getpid()} {start_time(os.getpid())}\n")
    (staging / "hosts").write_text("\n".join(layout.hosts) + "\n")
    (staging / "mnt").mkdir()
    staging.rename(layout.run_dir)
    mnt = str(layout.run_dir / "mnt")
    # Namespace files can be bind-mounted only onto a private mount.
    _run(["mount", "--bind", mnt, mnt])
    _run(["mount", "--make-private", mnt])
    layout.data_dir.mkdir(mode=0o700)
    ip("link", "add", layout.bridge, "type", "bridge")
    # Bridged frames skip the host's firewall (br_netfilter), so a FORWARD DROP
    # policy (Docker's) cannot cut the hosts off; older kernels lack the option.
    no_netfilter = ("nf_call_iptables", "0", "nf_call_ip6tables", "0", "nf_call_arptables", "0")
    ip("link", "set", "dev", layout.bridge, "type", "bridge", *no_netfilter, check=False)
    ip("link", "set", layout.bridge, "up")


def add_host(
    layout: Layout,
    host: str,
    address: str,
    prefix_len: int,
    hidden: list[Path],
    kept: list[Path] | None = None,
) -> None:
    """Makes one host: network namespace on the bridge, mount namespace, private /tmp.

    Args:
        layout: The run's names.
        host: The host's name (e.g. "h1").
        address: Its IPv4 address on the bridge.
        prefix_len: The subnet's prefix length.
        hidden: Paths covered by an empty read-only tmpfs inside the host.
        kept: Paths the host must still see although they are under /tmp (a
            checkout cloned there, on the session host): bound into its
            private /tmp at the same place.
    """
    netns, veth = layout.netns(host), layout.veth(host)
    ip("netns", "add", netns)
    ip("link", "add", veth, "type", "veth", "peer", "name", veth + "p")
    ip("link", "set", veth + "p", "netns", netns)
    ip("link", "set", veth, "master", layout.bridge, "up")
    ip("-n", netns, "link", "set", veth + "p", "name", "eth0")
    ip("-n", netns, "addr", "add", f"{address}/{prefix_len}", "dev", "eth0")
    ip("-n", netns, "link", "set", "eth0", "up")
    ip("-n", netns, "link", "set", "lo", "up")
    # A default route so "which address reaches the world" finds eth0, as on a
    # real host; with no address on the bridge nothing leaves the cluster.
    ip("-n", netns, "route", "add", "default", "dev", "eth0")
    tmp = layout.tmp_dir(host)
    tmp.mkdir(parents=True)
    tmp.chmod(0o1777)
    layout.mnt_file(host).touch()
    # Hidden paths first: one under /tmp (a checkout cloned there) is gone once
    # the host's private /tmp is bound over it, and could not be mounted on then.
    # Kept paths under /tmp are bound into the private /tmp before it covers them.
    keep = [str(p) for p in kept or [] if p.is_relative_to("/tmp")]
    for path in keep:
        (tmp / Path(path).relative_to("/tmp")).mkdir(parents=True, exist_ok=True)
    script = (
        'tmp="$1" data="$2" keep="$3" && shift 3'
        ' && for p; do mount -t tmpfs -o ro,size=4k,mode=0755 tmpfs "$p" || exit 1; done'
        ' && for k in $keep; do mount --bind "$k" "$tmp/${k#/tmp/}" || exit 1; done'
        ' && mount --rbind "$tmp" /tmp && mount -t tmpfs -o size=64k,mode=0700 tmpfs "$data"'
    )
    _run(
        [
            "unshare",
            f"--mount={layout.mnt_file(host)}",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            script,
            "sh",
            str(tmp),
            str(layout.data_dir),
            " ".join(keep),
            *map(str, hidden),
        ]
    )


def _run(argv: list[str]) -> None:
    """Runs a setup command; raises with its stderr when it fails."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")


def free_subnet() -> ipaddress.IPv4Network:
    """A 10.213.x.0/24 that no interface or route of the root namespace overlaps."""
    out = ip("-4", "-o", "addr", "show").stdout + ip("-4", "route", "show").stdout
    used = []
    for word in out.split():
        with contextlib.suppress(ValueError):
            used.append(ipaddress.ip_network(word, strict=False))
    candidates = [ipaddress.IPv4Network(f"10.213.{x}.0/24") for x in range(1, 255)]
    secrets.SystemRandom().shuffle(candidates)
    for net in candidates:
        if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
            return net
    raise RuntimeError("no free 10.213.x.0/24 subnet for the namespace cluster")


def start_time(pid: int) -> str | None:
    """A process's start time (clock ticks since boot), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def owner_alive(layout: Layout) -> bool:
    """Whether the process that created this run still runs (pid reuse checked)."""
    try:
        pid_text, started = (layout.run_dir / "owner").read_text().split()
    except (OSError, ValueError):
        return False
    return start_time(int(pid_text)) == started


def netns_pids(netns: str) -> list[int]:
    """Pids of the live processes in a network namespace (like ``ip netns pids``)."""
    try:
        ns = os.stat(f"/run/netns/{netns}")
    except OSError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (st.st_ino, st.st_dev) == (ns.st_ino, ns.st_dev):
            pids.append(int(entry))
    return pids


def marked_pids(mark: str) -> list[int]:
    """Pids of live processes whose environment holds ``mark`` (``NAME=value``)."""
    needle = mark.encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0") and "Z" not in _state(entry):
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def _state(pid: str) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def cmdline(pid: int) -> str:
    """A process's command line, words joined by spaces ("" if it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def pss_bytes(pid: int) -> int:
    """A process's proportional set size (its share of the memory it maps), 0 if gone."""
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    kib = [int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:")]
    return sum(kib) * 1024
