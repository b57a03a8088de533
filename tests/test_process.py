"""The process layer without Ray: argv, the stop ladder, the guard, the actor class.

``WorkerActor`` is a plain class; run here with an explicit placement, it
starts the real guard and the real program, so the whole supervision path
is exercised in a few hundred milliseconds per test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

from cmlray import _process
from cmlray._actor import Placement, WorkerActor, WorkerLaunch
from cmlray._lines import LineSplitter

pytestmark = pytest.mark.usefixtures("no_leaks")
PY = sys.executable


def test_argv_for_script_code_and_shell() -> None:
    assert _process.build_argv(kernel="python3", script="/p/a.py", code="", python=PY) == [
        PY, "-u", "/p/a.py",
    ]  # fmt: skip
    argv = _process.build_argv(kernel="python3", script="", code="print(1)", python=PY)
    assert argv[:3] == [PY, "-u", "-c"] and argv[-1] == "print(1)"
    done = subprocess.run(
        [*argv[:-1], "x = 1\nraise SystemExit(f'{x}')"], capture_output=True, text=True
    )
    assert (done.returncode, done.stderr) == (1, "1\n")
    shell = _process.build_argv(kernel="python3", script="", code="!echo a\n\n  !echo b", python=PY)
    assert shell == [_process.shell_path(), "-c", "echo a\necho b"]
    assert _process.build_argv(kernel="r", script="/p/a.R", code="", python=PY) == [
        "Rscript", "/p/a.R",
    ]  # fmt: skip


def test_shell_code_detection() -> None:
    assert _process.is_shell_code("!ls")
    assert _process.is_shell_code("  !ls\n\n!pwd\n")
    assert not _process.is_shell_code("print(1)\n!ls")
    assert not _process.is_shell_code("")


def test_python_with_shell_lines_runs_like_ipython() -> None:
    code = "for i in range(2):\n    !echo it $((i))\nx = '!not a command'\nprint(x)"
    source = _process.python_with_shell_lines(code)
    done = subprocess.run([PY, "-c", source], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines() == ["it 0", "it 0", "!not a command"]


def test_describe_status() -> None:
    assert _process.describe_status(0) == (0, "exit code 0")
    assert _process.describe_status(3 << 8) == (3, "exit code 3")
    assert _process.describe_status(signal.SIGKILL) == (-9, "killed by SIGKILL")


def test_line_splitter_keeps_lines_whole_across_chunks() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"hel") == []
    assert splitter.feed(b"lo\nwor") == ["hello"]
    assert splitter.feed("ld \u00e9\n".encode()[:-2]) == []
    assert splitter.feed("ld \u00e9\n".encode()[-2:] + b"\xff\n") == ["world \u00e9", "\ufffd"]
    assert splitter.feed(b"last") == []
    assert splitter.flush() == ["last"]
    assert splitter.flush() == []


def test_line_splitter_bounds_a_line_without_newline() -> None:
    splitter = LineSplitter(max_line_bytes=4)
    assert splitter.feed(b"abcdefghij") == ["abcd", "efgh"]
    assert splitter.flush() == ["ij"]


def _launch(code: str, grace_period_s: float = 5.0) -> WorkerActor:
    argv = _process.build_argv(kernel="python3", script="", code=code, python=PY)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    launch = WorkerLaunch("w" * 16, argv, env, os.getcwd(), grace_period_s)
    return WorkerActor(launch, Placement(ip="127.0.0.1", node_id="local"))


def _collect(actor: WorkerActor) -> list[tuple[str, object]]:
    return [event for batch in actor.run() for event in batch]


def test_actor_streams_placed_started_lines_and_exit() -> None:
    events = _collect(_launch("import sys\nprint('a')\nprint('b', file=sys.stderr)\nsys.exit(4)"))
    kinds = [kind for kind, _ in events]
    assert kinds[:2] == ["placed", "started"] and kinds[-1] == "exited"
    out = [line for kind, lines in events if kind == "out" for line in lines]  # type: ignore[union-attr]
    err = [line for kind, lines in events if kind == "err" for line in lines]  # type: ignore[union-attr]
    assert (out, err) == (["a"], ["b"])
    final = events[-1][1]
    assert isinstance(final, dict)
    assert (final["status"], final["exit_code"], final["reason"]) == ("failed", 4, "exit code 4")


def test_actor_sets_the_node_variables() -> None:
    code = "import os\nprint(os.environ['CDSW_IP_ADDRESS'], os.environ['CDSW_APP_PORT'], repr(os.environ['CUDA_VISIBLE_DEVICES']))"
    events = _collect(_launch(code))
    placed = events[0][1]
    assert isinstance(placed, dict)
    lines = [line for kind, lines in events if kind == "out" for line in lines]  # type: ignore[union-attr]
    assert lines == [f"127.0.0.1 {placed['app_port']} ''"]


def test_missing_executable_is_a_failure_with_reason() -> None:
    launch = WorkerLaunch("w" * 16, ["/no/such/program"], dict(os.environ), os.getcwd())
    events = _collect(WorkerActor(launch, Placement("127.0.0.1", "local")))
    final = events[-1][1]
    assert isinstance(final, dict)
    assert final["status"] == "failed" and "cannot start '/no/such/program'" in final["reason"]


def _descendants_named(root: int, text: str) -> list[int]:
    found = []
    for proc in psutil.Process(root).children(recursive=True):
        try:
            if text in " ".join(proc.cmdline()):
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


def _tree_of_guard(pid: int, *commands: str, timeout_s: float = 60.0) -> list[int]:
    """The guard's pid and its descendants', once each of ``commands`` runs below it.

    Backgrounded children start when the machine gets to them: wait for them
    (a condition), not for a fixed time.
    """
    guard = psutil.Process(pid).parent()
    assert guard is not None and "_guard.py" in " ".join(guard.cmdline())
    deadline = time.monotonic() + timeout_s
    while not all(_descendants_named(guard.pid, c) for c in commands):
        assert time.monotonic() < deadline, f"{commands} did not all start below the guard"
        time.sleep(0.02)
    return [guard.pid, *(p.pid for p in guard.children(recursive=True))]


def test_stop_from_another_thread_kills_setsid_children_too() -> None:
    code = "!setsid sleep 311 & sleep 312 & echo ready; wait"
    actor = _launch(code, grace_period_s=2)
    events: list[tuple[str, object]] = []
    stream = actor.run()
    tree: list[int] = []
    for batch in stream:
        events.extend(batch)
        if any(kind == "out" for kind, _ in batch):
            started = next(p for k, p in events if k == "started")
            assert isinstance(started, dict)
            tree = _tree_of_guard(started["pid"], "sleep 311", "sleep 312")
            threading.Thread(target=actor.stop, args=(2.0,)).start()
    final = events[-1][1]
    assert isinstance(final, dict)
    assert (final["status"], final["exit_code"]) == ("stopped", -15)
    assert len(tree) >= 4
    _, alive = psutil.wait_procs([psutil.Process(p) for p in tree if psutil.pid_exists(p)], 5)
    assert not alive, alive


def test_guard_cleans_up_when_its_actor_dies() -> None:
    """The actor's death (its control socket closing) ends the program's tree."""
    code = "!setsid sleep 313 & echo ready; sleep 314"
    actor = _launch(code)
    stream = actor.run()
    pid = None
    for batch in stream:
        for kind, payload in batch:
            if kind == "started":
                assert isinstance(payload, dict)
                pid = payload["pid"]
        if any(kind == "out" for kind, _ in batch):
            break
    assert pid is not None
    tree = _tree_of_guard(pid, "sleep 313", "sleep 314")
    stream.close()  # closes the control socket, as the actor process's death would
    procs = [psutil.Process(p) for p in tree if psutil.pid_exists(p)]
    _, alive = psutil.wait_procs(procs, 10)
    assert not alive, alive


def test_a_crash_inside_the_actor_is_described_as_such() -> None:
    from cmlray._events import describe_actor_death

    class RayTaskError(Exception):  # the shape of Ray's wrapper: the actor's error as .cause
        cause = OSError("could not reserve a free TCP port")

    assert describe_actor_death(RayTaskError("...")) == (
        "could not run its program: OSError: could not reserve a free TCP port"
    )
    assert (
        describe_actor_death(RuntimeError("The actor died because its node has died."))
        == "node lost"
    )
    # Ray's text for ray.kill names the class (NodeAgent): not a node's death.
    killed = "The actor died unexpectedly.\n\tclass_name: NodeAgent\n\tpid: 9\nIt was killed by `ray.kill`."
    assert describe_actor_death(RuntimeError(killed)).startswith("its node's agent died: ")
    # Ray colours parts of its messages: reasons are plain text.
    coloured = RuntimeError("\x1b[36mray::NodeAgent.run()\x1b[39m failed")
    assert "\x1b" not in describe_actor_death(coloured)
    assert "ray::NodeAgent.run() failed" in describe_actor_death(coloured)


def test_errors_from_ray_are_plain_text() -> None:
    from cmlray.errors import translate_ray_error

    error = translate_ray_error(RuntimeError("\x1b[36mray::NodeAgent\x1b[39m gone"), "starting")
    assert str(error) == "starting failed: RuntimeError: ray::NodeAgent gone"
