"""The command line of a worker's program, exit statuses in words, and lines cut from bytes."""

from __future__ import annotations

import signal
import subprocess
import sys

from cmlray import _cmdline, _proctree
from cmlray._lines import LineSplitter

PY = sys.executable


def test_argv_for_script_code_and_shell() -> None:
    assert _cmdline.build_argv(kernel="python3", script="/p/a.py", code="", python=PY) == [
        PY, "-u", "/p/a.py",
    ]  # fmt: skip
    argv = _cmdline.build_argv(kernel="python3", script="", code="print(1)", python=PY)
    assert argv[:3] == [PY, "-u", "-c"] and argv[-1] == "print(1)"
    done = subprocess.run(
        [*argv[:-1], "x = 1\nraise SystemExit(f'{x}')"], capture_output=True, text=True
    )
    assert (done.returncode, done.stderr) == (1, "1\n")
    shell = _cmdline.build_argv(kernel="python3", script="", code="!echo a\n\n  !echo b", python=PY)
    assert shell == [_cmdline.shell_path(), "-c", "echo a\necho b"]
    assert _cmdline.build_argv(kernel="r", script="/p/a.R", code="", python=PY) == [
        "Rscript", "/p/a.R",
    ]  # fmt: skip


def test_shell_code_detection() -> None:
    assert _cmdline.is_shell_code("!ls")
    assert _cmdline.is_shell_code("  !ls\n\n!pwd\n")
    assert not _cmdline.is_shell_code("print(1)\n!ls")
    assert not _cmdline.is_shell_code("")


def test_python_with_shell_lines_runs_like_ipython() -> None:
    code = "for i in range(2):\n    !echo it $((i))\nx = '!not a command'\nprint(x)"
    source = _cmdline.python_with_shell_lines(code)
    done = subprocess.run([PY, "-c", source], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines() == ["it 0", "it 0", "!not a command"]


def test_describe_status() -> None:
    assert _proctree.describe_status(0) == (0, "exit code 0")
    assert _proctree.describe_status(3 << 8) == (3, "exit code 3")
    assert _proctree.describe_status(signal.SIGKILL) == (-9, "killed by SIGKILL")


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
