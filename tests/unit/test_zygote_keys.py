"""Which programs a zygote runs, and which zygote (``_zygote.startup_key``)."""

from __future__ import annotations

from cmlray import _cmdline
from cmlray._zygote import FRESH_ENV, program_form, startup_key

PY = "/usr/bin/python3"


def test_the_two_python_command_lines_cmlray_builds_are_forms_a_zygote_runs() -> None:
    code = _cmdline.build_argv(kernel="python3", script="", code="print(1)", python=PY)
    script = _cmdline.build_argv(kernel="python3", script="/p/job.py", code="", python=PY)
    assert program_form(code) == ("-c", code[3], code[4:])
    assert program_form(script) == ("script", "/p/job.py", [])


def test_shell_r_and_unknown_command_lines_are_not() -> None:
    shell = _cmdline.build_argv(kernel="python3", script="", code="!echo hi", python=PY)
    assert program_form(shell) is None
    assert program_form([PY, "-u", "/p/data.txt"]) is None  # not a .py file
    assert program_form([PY, "-X", "dev", "/p/job.py"]) is None
    assert program_form(["python3", "-u", "/p/job.py"]) is None  # not an absolute interpreter


def test_the_key_is_the_interpreter_and_the_variables_that_shape_its_start() -> None:
    argv = [PY, "-u", "-c", "pass"]
    base = {"PATH": "/bin", "HOME": "/root", "LANG": "C.UTF-8", "CDSW_APP_PORT": "8080"}
    key = startup_key(argv, base)
    assert key == (PY, (("HOME", "/root"), ("LANG", "C.UTF-8")))
    assert startup_key(argv, base | {"CDSW_APP_PORT": "9090", "MY_PARAM": "3"}) == key
    assert startup_key(argv, base | {"PYTHONPATH": "/lib"}) != key
    assert startup_key(argv, base | {"LC_ALL": "C"}) != key
    assert startup_key(argv, base | {FRESH_ENV: "1"}) is None
    assert startup_key(argv, base | {FRESH_ENV: "0"}) == key
