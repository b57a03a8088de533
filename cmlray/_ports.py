"""A TCP port reserved for one worker alone (``CDSW_APP_PORT``).

On CML every engine has its own IP; here workers share their node's IP, so
each gets a port of its own. A free port is found by binding to port 0, and
claimed with a lock file (``O_EXCL``) under a per-user directory holding the
claimant's pid (the node agent), so two workers on one node never get the
same port. A worker's guard removes its claim when it ends. A claim whose
pid is gone (a node's agent and guards killed together) is stale: taken over
when its port comes up again, removed by ``sweep()`` when a node agent
starts, and by an own head's reaper once the session's processes are gone, so
no claim outlives the session that made it. A lease touches only its own
port's file, never the whole directory: a node running a thousand workers
claims each port in constant time. Stale claims are removed under a lock on
the directory, so a claim made meanwhile by another session is never removed.

Standard library only (see ``_standalone.py``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

_ATTEMPTS = 64


def _claims_path() -> str:
    return os.path.join(tempfile.gettempdir(), f"cmlray-ports-{os.getuid()}")


def claims_dir() -> str:
    """This user's claims directory on this node (made if missing)."""
    path = _claims_path()
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


@contextlib.contextmanager
def _locked(directory: str) -> Iterator[None]:
    fd = os.open(os.path.join(directory, ".lock"), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@dataclass
class PortLease:
    """A claimed port; ``release()`` gives it back."""

    port: int
    claim_path: str

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.claim_path)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def _claim_is_stale(path: str) -> bool:
    """True when the claimant is gone (a claim being written, still empty, is not stale)."""
    try:
        with open(path) as f:
            text = f.read().strip()
        if not text:
            return False
        os.kill(int(text), 0)
    except PermissionError:
        return False  # alive, another user's process
    except (OSError, ValueError):
        return True
    return False


def _remove_if_stale(path: str) -> bool:
    if not _claim_is_stale(path):
        return False
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return True


def _try_claim(directory: str, port: int) -> bool:
    path = os.path.join(directory, str(port))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        with _locked(directory):
            if not _remove_if_stale(path):
                return False
        return _try_claim(directory, port)
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def sweep(directory: str | None = None) -> list[int]:
    """Remove the stale claims in ``directory`` (this user's); returns their ports."""
    directory = directory or _claims_path()
    if not os.path.isdir(directory):
        return []
    removed = []
    with _locked(directory):
        for name in os.listdir(directory):
            if name.isdigit() and _remove_if_stale(os.path.join(directory, name)):
                removed.append(int(name))
    return sorted(removed)


def lease() -> PortLease:
    """Claim a port that no other cmlray worker on this node holds."""
    directory = claims_dir()
    for _ in range(_ATTEMPTS):
        port = _free_port()
        if _try_claim(directory, port):
            return PortLease(port, os.path.join(directory, str(port)))
    raise OSError("could not reserve a free TCP port for CDSW_APP_PORT")
