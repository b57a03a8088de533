"""Bad calls across the public API: a specific error, raised before anything starts.

No session is running in this module: every bad call must fail on its
arguments alone, without starting Ray (checked after each call) and without
leaving a process behind (checked by the module's leak fixture).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

import cmlray
from cmlray import _lifecycle

pytestmark = pytest.mark.usefixtures("no_leaks")

OK = {"n": 1, "cpu": 1, "memory": 1, "code": "print(1)"}


def launch(**changes: Any) -> Callable[[], object]:
    return lambda: cmlray.launch_workers(**{**OK, **changes})


BAD_CALLS: list[tuple[str, Callable[[], object], type[Exception], str]] = [
    ("n zero", launch(n=0), ValueError, r"n must be a whole number >= 1, got 0"),
    ("n fractional", launch(n=1.5), TypeError, r"n must be a whole number"),
    ("n a string", launch(n="2"), TypeError, r"n must be a whole number"),
    ("n a bool", launch(n=True), TypeError, r"n must be a whole number"),
    ("cpu zero", launch(cpu=0), ValueError, r"cpu must be a number of cores > 0, got 0"),
    ("cpu negative", launch(cpu=-1), ValueError, r"cpu must be a number of cores > 0"),
    ("cpu a string", launch(cpu="1"), TypeError, r"cpu must be a number of cores"),
    ("cpu nan", launch(cpu=float("nan")), ValueError, r"cpu must be a number of cores > 0"),
    ("memory zero", launch(memory=0), ValueError, r"memory must be a number of GiB > 0"),
    ("memory None", launch(memory=None), TypeError, r"memory must be a number of GiB"),
    ("memory inf", launch(memory=float("inf")), ValueError, r"memory must be a number of GiB"),
    ("gpu negative", launch(nvidia_gpu=-1), ValueError, r"nvidia_gpu must be a whole number >= 0"),
    ("gpu fractional", launch(nvidia_gpu=0.5), TypeError, r"nvidia_gpu must be a whole number"),
    ("env value not str", launch(env={"A": 1}), TypeError, r"env must map str to str"),
    ("env a list", launch(env=["A=1"]), TypeError, r"env must be a dict of str to str"),
    ("env empty name", launch(env={"": "x"}), ValueError, r"env has an invalid variable name"),
    ("env name with =", launch(env={"A=B": "x"}), ValueError, r"invalid variable name"),
    ("env reserved", launch(env={"CDSW_ENGINE_ID": "x"}), ValueError, r"env may not set CDSW_ENGINE_ID"),
    ("script missing", launch(script="no/such/file.py", code=""), ValueError, r"script 'no/such/file.py' not found"),
    ("script a number", launch(script=3, code=""), TypeError, r"script must be a path"),
    ("no program", launch(code=""), ValueError, r"needs script= \(a file\) or code="),
    ("blank code", launch(code="   \n"), ValueError, r"needs script= \(a file\) or code="),
    ("code not str", launch(code=123), TypeError, r"code must be a string"),
    ("kernel python2", launch(kernel="python2"), ValueError, r"cannot run Python 2 workers"),
    ("kernel scala", launch(kernel="scala"), ValueError, r"cannot run Scala workers"),
    ("kernel unknown", launch(kernel="julia"), ValueError, r"kernel must be 'python3' or 'r'"),
    ("kernel not str", launch(kernel=3), TypeError, r"kernel must be a string"),
    ("name empty", launch(name=" "), TypeError, r"name must be a non-empty string"),
    ("grace negative", launch(grace_period_s=-1), ValueError, r"grace_period_s must be a number of seconds >= 0"),
    ("stop: not an id", lambda: cmlray.stop_workers(123), TypeError, r"worker_id must be worker ids"),
    ("stop: bad grace", lambda: cmlray.stop_workers(grace_period_s=-2), ValueError, r"grace_period_s"),
    ("await: not an id", lambda: cmlray.await_workers(123), TypeError, r"ids must be a worker id"),
    ("await: a list of ints", lambda: cmlray.await_workers([1]), TypeError, r"ids must be worker ids"),
    ("await: unknown id", lambda: cmlray.await_workers("abcdefabcdefabcd"), ValueError, r"this session launched no worker 'abcdefabcdefabcd'"),
    ("await: negative timeout", lambda: cmlray.await_workers([], timeout_seconds=-1), ValueError, r"timeout_seconds must be a number of seconds >= 0"),
    ("await: timeout a string", lambda: cmlray.await_workers([], timeout_seconds="5"), ValueError, r"timeout_seconds"),
    ("init: num_cpus negative", lambda: cmlray.init(num_cpus=-1), ValueError, r"num_cpus must be a whole number >= 0"),
    ("init: num_gpus fractional", lambda: cmlray.init(num_gpus=0.5), TypeError, r"num_gpus must be a whole number"),
    ("init: resources negative", lambda: cmlray.init(resources={"x": -1}), ValueError, r"resources\['x'\] must be >= 0"),
    ("init: resources a list", lambda: cmlray.init(resources=[1]), TypeError, r"resources must be a dict"),
    ("init: address a number", lambda: cmlray.init(address=5), TypeError, r"address must be a string"),
    ("init: head_services unknown", lambda: cmlray.init(head_services="none"), ValueError, r"head_services must be 'minimal' or 'all', got 'none'"),
    ("init: project_dir missing", lambda: cmlray.init(project_dir="/no/such/dir"), ValueError, r"project_dir must be an existing directory"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [pytest.param(call, error, message, id=name) for name, call, error, message in BAD_CALLS],
)
def test_bad_call_raises_before_anything_starts(
    call: Callable[[], object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        call()
    assert _lifecycle.current(create=False) is None, "a bad call must not start a session"


def test_stop_without_session_answers_404() -> None:
    (result,) = cmlray.stop_workers("abcdefabcdefabcd")
    assert result.status_code == 404 and not result.ok
    assert _lifecycle.current(create=False) is None


def test_list_without_session_is_empty() -> None:
    assert cmlray.list_workers() == []
    assert _lifecycle.current(create=False) is None


CLI_BAD = [
    (["launch", "-n", "0", "--cpu", "1", "--memory", "1", "--code", "x"], "n must be a whole number >= 1"),
    (["launch", "-n", "1", "--cpu", "0", "--memory", "1", "--code", "x"], "cpu must be a number of cores > 0"),
    (["launch", "-n", "1", "--cpu", "abc", "--memory", "1", "--code", "x"], "expected a number, got 'abc'"),
    (["launch", "-n", "1", "--cpu", "1", "--memory", "1"], "give exactly one of --script FILE, --code CODE"),
    (["launch", "-n", "1", "--cpu", "1", "--memory", "1", "--script", "a.py", "--code", "x"], "not allowed with argument"),
    (["launch", "-n", "1", "--cpu", "1", "--memory", "1", "--env", "NOVALUE", "--code", "x"], "--env takes NAME=VALUE"),
    (["launch", "-n", "1", "--cpu", "1", "--memory", "1", "--script", "missing.py"], "script 'missing.py' not found"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "message"), CLI_BAD, ids=[" ".join(a)[:40] for a, _ in CLI_BAD])
def test_cli_bad_input_exits_2_with_a_message(argv: list[str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cmlray", *argv], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done
    assert message in " ".join(done.stderr.split()), done.stderr
