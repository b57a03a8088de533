"""Files a worker sends home: to the session's host, wherever the worker ran.

CML mounts one project in every engine, so a file a worker writes is the
session's at once. On a Ray cluster a worker's node has its own disk: a
program calls ``cmlray.worker.send_file(path)`` and the file lands on the
session's host (relative destinations under the session's project dir),
written whole or not at all (a temporary name, then a rename).

A worker's agent reads the file and passes it, in chunks, to the agent on
the session's own node (the *home* agent), which writes it. When the worker
runs on the session's node itself, the agent copies the file directly.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

CHUNK_BYTES = 8 << 20
_tokens = itertools.count()


def destination(dest: str, home_dir: str) -> str:
    """Where ``dest`` lands on the session's host: relative to its project dir."""
    return os.path.normpath(os.path.join(home_dir, os.path.expanduser(dest)))


def _partial(path: str, token: str) -> str:
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.cmlray-{token}")


def write_chunk(path: str, data: bytes, offset: int, final: bool, token: str) -> None:
    """Write one chunk of a file being received; the last one renames it into place."""
    partial = _partial(path, token)
    if offset == 0:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(partial, "r+b" if offset else "wb") as f:
        f.seek(offset)
        f.write(data)
    if final:
        os.replace(partial, path)


def write_local(path: str, data: bytes | bytearray | memoryview, token: str) -> None:
    """Write ``data`` at ``path`` on this host, whole or not at all."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    partial = _partial(path, token)
    try:
        with open(partial, "wb") as f:
            f.write(data)
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise


def send_via_temp(data: bytes | bytearray | memoryview, send: Callable[[str], str]) -> str:
    """``send(path)`` of a temporary file holding ``data`` (removed after); its answer."""
    fd, source = tempfile.mkstemp(prefix="cmlray-send-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return send(source)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(source)


def next_token() -> int:
    """A number new in this process, for the names of files being written."""
    return next(_tokens)


def copy_local(source: str, path: str, token: str) -> None:
    """Put ``source`` at ``path`` on this host, whole or not at all."""
    with contextlib.suppress(FileNotFoundError):
        if os.path.samefile(source, path):
            return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    partial = _partial(path, token)
    shutil.copyfile(source, partial)
    os.replace(partial, path)


def send(home: Any, source: str, path: str, token: str) -> None:
    """Stream ``source`` to ``path`` through the home agent, chunk by chunk."""
    import ray

    offset = 0
    with open(source, "rb") as f:
        while True:
            data = f.read(CHUNK_BYTES)
            final = len(data) < CHUNK_BYTES
            ray.get(home.receive_file.remote(path, data, offset, final, token))
            offset += len(data)
            if final:
                return
