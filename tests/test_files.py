"""Files a worker sends home (``cmlray.worker.send_file``, ``send_bytes``), on an own head.

Across hosts, through the home agent in chunks: test_cluster and the
multi-host tests.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import cmlray
import cmlray.worker

pytestmark = pytest.mark.usefixtures("session")

SEND = """
import os, tempfile, cmlray.worker
local = os.path.join(tempfile.gettempdir(), os.environ['CDSW_ENGINE_ID'])  # (its own TMPDIR)
with open(local, 'wb') as f:
    f.write(os.environ['CDSW_ENGINE_ID'].encode() * 1000)
print(cmlray.worker.send_file(local, 'out/' + os.environ['CDSW_ENGINE_ID'] + '.bin'))
os.unlink(local)
with open('made-here.txt', 'w') as f:
    f.write('in the project already')
print(cmlray.worker.send_file('made-here.txt'))  # same place: nothing to copy
"""


def test_files_land_in_the_sessions_project_dir(session: str) -> None:
    done = cmlray.await_workers(cmlray.launch_workers(2, cpu=0.25, memory=0.2, code=SEND))
    assert len(done["workers"]) == 2, done["failures"]
    for worker in done["workers"]:
        sent = Path(session) / "out" / f"{worker['id']}.bin"
        assert worker["tail"] == [str(sent), str(Path(session) / "made-here.txt")]
        assert sent.read_bytes() == worker["id"].encode() * 1000
    assert (Path(session) / "made-here.txt").read_text() == "in the project already"
    assert not [p for p in (Path(session) / "out").iterdir() if p.name.startswith(".")]


def test_absolute_destinations_and_a_missing_file(session: str, tmp_path: Path) -> None:
    target = tmp_path / "deep" / "result.bin"
    code = (
        "import os, cmlray.worker\n"
        "data = os.urandom(3_000_000)\n"
        "open('big.bin', 'wb').write(data)\n"
        "import hashlib; print(hashlib.sha256(data).hexdigest())\n"
        f"cmlray.worker.send_file('big.bin', {str(target)!r})\n"
        "cmlray.worker.send_file('no-such-file')\n"
    )
    (worker,) = cmlray.await_workers(cmlray.launch_workers(1, cpu=0.25, memory=0.2, code=code))[
        "failures"
    ]
    assert hashlib.sha256(target.read_bytes()).hexdigest() == worker["tail"][0]
    assert "send_file: no file" in "\n".join(worker["tail"])  # a clear error in the program
    assert worker["exit_code"] == 1


SEND_BYTES = """
import os, cmlray.worker
me = os.environ['CDSW_ENGINE_ID']
print(cmlray.worker.send_bytes(me.encode() * 1000, 'out/' + me + '.bin'))
print(cmlray.worker.send_bytes(bytearray(b'ab'), {target!r}))
print(cmlray.worker.send_bytes(memoryview(b'xyz'), {target!r}))  # replaces it whole
print(os.listdir({folder!r}))  # no partial file left beside it
try:
    cmlray.worker.send_bytes('text', 'out/x')
except TypeError as exc:
    print(exc)
"""


def test_bytes_are_written_in_place_on_the_sessions_host(session: str, tmp_path: Path) -> None:
    target = tmp_path / "deep" / "result.bin"
    code = SEND_BYTES.format(target=str(target), folder=str(target.parent))
    (worker,) = cmlray.await_workers(cmlray.launch_workers(1, cpu=0.25, memory=0.2, code=code))[
        "workers"
    ]
    sent = Path(session) / "out" / f"{worker['id']}.bin"
    assert worker["tail"] == [
        str(sent),
        str(target),
        str(target),
        "['result.bin']",
        "send_bytes: data must be bytes-like, not str",
    ]
    assert sent.read_bytes() == worker["id"].encode() * 1000
    assert target.read_bytes() == b"xyz"


def test_send_file_outside_a_worker_says_so(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(cmlray.QueueError, match=r"only works inside a worker"):
        cmlray.worker.send_file(tmp_path / "f")
    with pytest.raises(cmlray.QueueError, match=r"only works inside a worker"):
        cmlray.worker.send_bytes(b"x", tmp_path / "g")
