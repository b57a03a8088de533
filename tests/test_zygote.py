"""Python programs forked from a zygote (``_zygote.py``) behave as new interpreters.

Driven without Ray, as in test_forkserver.py: the test process enables its
fork servers as a node agent does. Each behaviour is compared with the same
command line run as a new interpreter (``subprocess``), not with a guess.
"""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from cmlray import _cmdline, _forkserver
from cmlray._zygote import FRESH_ENV, startup_key
from cmlray._zygoteboot import PRELOAD
from tests.support.supervise import PY, Events, final, launch, out_lines, supervise

pytestmark = pytest.mark.usefixtures("no_leaks")

PARENT = "import os; print('_zygote' in open(f'/proc/{os.getppid()}/cmdline').read())\n"


@pytest.fixture(autouse=True)
def servers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process's fork servers, as an agent's; all ended after the test."""
    monkeypatch.setattr(_forkserver, "_starter", _forkserver.GuardStarter())
    monkeypatch.setattr(_forkserver, "_zygotes", {})
    yield
    _forkserver.close_all()


def fresh(
    code: str = "", script: str = "", env: dict[str, str] | None = None
) -> tuple[str, str, int]:
    """The same program run as a new interpreter: (stdout, stderr, return code)."""
    argv = _cmdline.build_argv(kernel="python3", script=script, code=code, python=PY)
    done = subprocess.run(
        argv, capture_output=True, text=True, env=dict(os.environ) | (env or {}), timeout=60
    )
    return done.stdout, done.stderr, done.returncode


def err_lines(events: Events) -> list[str]:
    return out_lines(events, "err")


def test_a_python_program_is_forked_from_the_zygote_with_what_a_new_one_loads() -> None:
    """What a new interpreter loads, and cmlray's worker side loaded ahead: no more.

    The zygote imports ``PRELOAD`` (with ``importlib.util``, which its boot
    uses) as a new interpreter would: the same modules must be loaded in a
    new interpreter that imports them, none of the zygote's own.
    """
    listing = "import sys\nprint(' '.join(sorted(sys.modules)))\n"
    code = listing + "import cmlray\nprint(hasattr(cmlray, '_zygote'))\n" + PARENT
    events = supervise(launch(code))
    loaded, attribute, forked = out_lines(events)
    assert forked == "True"  # its guard is a fork of the zygote
    ahead = f"import importlib.util, {', '.join(PRELOAD)}\n"
    assert loaded.split() == fresh(ahead + listing)[0].split()
    assert {"cmlray._zygote", "cmlray._forkserver", "cmlray._guard"}.isdisjoint(loaded.split())
    assert attribute == "False"  # nor does the package it keeps know them
    assert final(events)["status"] == "succeeded"


def test_a_module_beside_the_script_wins_over_one_loaded_ahead(tmp_path: Path) -> None:
    """A new interpreter imports ``pickle.py`` beside the script, not the standard one."""
    (tmp_path / "pickle.py").write_text("WHO = 'beside the script'\n")
    script = tmp_path / "job.py"
    script.write_text(
        "import sys\nprint('cmlray.worker' in sys.modules)\n"
        "import pickle\nprint(getattr(pickle, 'WHO', 'the standard one'))\n" + PARENT
    )
    lines = out_lines(supervise(launch("", script=str(script))))
    assert lines == ["False", "beside the script", "True"]
    assert fresh(script=str(script))[0].splitlines()[:2] == lines[:2]


def test_a_program_with_a_cmlray_of_its_own_imports_that_one(tmp_path: Path) -> None:
    (tmp_path / "cmlray").mkdir()
    (tmp_path / "cmlray" / "__init__.py").write_text("WHO = 'its own'\n")
    script = tmp_path / "job.py"
    script.write_text("import cmlray\nprint(getattr(cmlray, 'WHO', 'the agent\\'s'))\n" + PARENT)
    lines = out_lines(supervise(launch("", script=str(script))))
    assert lines == ["its own", "True"]
    assert fresh(script=str(script))[0].splitlines()[0] == "its own"


def test_code_sees_argv_path_main_env_cwd_and_a_session_of_its_own(tmp_path: Path) -> None:
    code = (
        "import os, sys\n"
        "print(sys.argv, repr(sys.path[0]), __name__, os.getcwd(), os.environ['ZYGOTE_TEST'])\n"
        "print(os.getpgid(0) == os.getpid() == os.getsid(0), sys.stdin.read() == '')\n"
        "print(sys.flags.isolated, sys.flags.no_site, sys.stdout.write_through)\n"
        "shown = open('/proc/self/cmdline').read(), open('/proc/self/environ').read()\n"
        "print(shown[0].rstrip('\\0') == ' '.join(sys.orig_argv), 'ZYGOTE_TEST=yes\\0' in shown[1],\n"
        "      'CMLRAY_ZYGOTE_PAD' in shown[1], shown[1].split('\\0\\0')[0].count('\\0') + 1)\n"
    )
    item = launch(code, env={"ZYGOTE_TEST": "yes"})
    item.cwd = str(tmp_path)
    lines = out_lines(supervise(item))
    own = 4 + ("TMPDIR" not in item.env)  # CDSW_*, CUDA_*, the channel; its own TMPDIR
    assert lines == [
        f"['-c'] '' __main__ {tmp_path} yes",
        "True True",
        "0 0 True",
        f"True True False {len(item.env) + own}",
    ]


def test_a_script_ends_as_an_interpreter_does(tmp_path: Path) -> None:
    """Exit status, non-daemon threads joined, atexit run, unclosed files flushed."""
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent("""\
            import atexit, os, sys, threading, time
            print(sys.argv[1:], sys.path[0], __file__ == sys.argv[0], __name__)
            kept = open(os.path.join(os.path.dirname(__file__), "kept.txt"), "w")
            kept.write("flushed at exit")
            atexit.register(print, "atexit ran")
            threading.Thread(target=lambda: (time.sleep(0.2), print("thread joined"))).start()
            sys.exit(4)
        """)
    )
    events = supervise(launch("", script=str(script)))
    assert out_lines(events) == [f"[] {tmp_path} True __main__", "thread joined", "atexit ran"]
    assert final(events)["exit_code"] == fresh(script=str(script))[2] == 4
    assert (tmp_path / "kept.txt").read_text() == "flushed at exit"


def test_an_uncaught_exception_prints_what_a_new_interpreter_prints() -> None:
    code = "def f():\n    raise ValueError('no')\n\nf()\n"
    events = supervise(launch(code))
    _, stderr, returncode = fresh(code)
    assert err_lines(events) == stderr.splitlines()
    assert final(events)["exit_code"] == returncode == 1


def test_keyboard_interrupt_ends_it_by_sigint_as_a_new_interpreter() -> None:
    events = supervise(launch("raise KeyboardInterrupt"))
    assert final(events)["exit_code"] == fresh("raise KeyboardInterrupt")[2] == -signal.SIGINT
    assert err_lines(events)[-1] == "KeyboardInterrupt"


def test_a_worker_can_ask_for_a_new_interpreter() -> None:
    events = supervise(launch(PARENT, env={FRESH_ENV: "1"}))
    assert out_lines(events) == ["False"]  # its guard came from the bare fork server


def test_a_zygote_that_cannot_serve_leaves_the_programs_to_new_interpreters(tmp_path: Path) -> None:
    """A ``sitecustomize`` that starts a thread makes forking unsafe: the zygote refuses."""
    (tmp_path / "sitecustomize.py").write_text(
        "import threading, time\nthreading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
    )
    env = {"PYTHONPATH": str(tmp_path)}
    for _ in range(2):  # the second is not tried on the zygote again
        events = supervise(launch(PARENT, env=env))
        assert out_lines(events) == ["False"]
    assert list(_forkserver._zygotes.values()) == [None]


def test_zygotes_end_with_their_agent_and_every_guard_with_its_program() -> None:
    events = supervise(launch("print('up')"))
    assert out_lines(events) == ["up"]
    (starter,) = _forkserver._zygotes.values()
    assert starter is not None and starter.forked_any
    zygote = psutil.Process(starter._server.pid if starter._server else -1)
    assert zygote.is_running() and not zygote.children()  # no guard left behind
    _forkserver.close_all()  # as the agent's process ending closes its end
    _, alive = psutil.wait_procs([zygote], 10)
    assert not alive


@pytest.mark.parametrize("code", ["pass", "!true"], ids=["forked-python", "exec-shell"])
def test_a_missing_working_directory_is_named_whichever_way_the_program_starts(
    code: str, tmp_path: Path
) -> None:
    item = launch(code)
    item.cwd = str(tmp_path / "gone")
    ended = final(supervise(item))
    assert ended["status"] == "failed"
    assert f"its working directory {item.cwd!r} does not exist" in ended["reason"], ended


def test_a_zygote_started_ahead_serves_the_first_worker() -> None:
    """An agent starts its default zygote before any worker (``_forkserver.prestart``)."""
    grandparent = (
        "import os\nprint(open(f'/proc/{os.getppid()}/stat').read().rsplit(')')[-1].split()[1])"
    )
    item = launch(grandparent)
    key = startup_key(item.argv, item.env)
    assert key is not None
    _forkserver.prestart(key)
    starter = _forkserver._zygotes[key]
    assert starter is not None and starter._server is not None
    assert out_lines(supervise(item)) == [str(starter._server.pid)]  # its guard's parent


def test_a_program_breaks_into_its_own_breakpoint_hook_from_a_zygote_started_without_it() -> None:
    """``PYTHONBREAKPOINT`` is read at each ``breakpoint()``, not at start: no zygote of its own.

    (Ray's driver sets it in ``ray.init``, after an own head's agent has
    started the zygote: ``cmlray/_homeagent.py``.)
    """
    plain = launch("print('plain')")
    hooked = launch("breakpoint('hook', 'ran')", env={"PYTHONBREAKPOINT": "builtins.print"})
    assert startup_key(plain.argv, plain.env) == startup_key(hooked.argv, hooked.env)
    _forkserver.prestart(startup_key(plain.argv, plain.env))
    events = supervise(hooked)
    assert out_lines(events) == ["hook ran"]
    assert (
        fresh("breakpoint('hook', 'ran')", env={"PYTHONBREAKPOINT": "builtins.print"})[0]
        == "hook ran\n"
    )
    (starter,) = _forkserver._zygotes.values()
    assert starter is not None and starter.forked_any  # served by the one zygote
