"""kernel="r" workers from a Python session: a real Rscript.

What a Python worker gets, an R worker gets: the environment and identity
variables, the relay, statuses and exit codes, output line by line as it is
written, the memory limit, and the stop ladder on its whole process tree.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable

import psutil
import pytest

import cmlray as cdsw
from cmlray import _lifecycle
from tests.support.console import Captured

pytestmark = pytest.mark.skipif(
    shutil.which("Rscript") is None, reason="R is not installed (apt-get install r-base-core)"
)
DEADLINE_S = 60.0


def _wait(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _tail(worker: dict[str, object]) -> list[str]:
    (now,) = [w for w in cdsw.list_workers() if w["id"] == worker["id"]]
    return list(now["tail"])  # type: ignore[call-overload]


def _run(**kwargs: object) -> dict[str, object]:
    (worker,) = cdsw.launch_workers(1, cpu=0.25, memory=0.5, kernel="r", **kwargs)  # type: ignore[arg-type]
    result = cdsw.await_workers(worker, timeout_seconds=DEADLINE_S)
    (done,) = result["workers"] + result["failures"]
    return done


def test_an_r_script_sees_the_workers_environment(session: str, captured: Captured) -> None:
    with open(os.path.join(session, "whoami.R"), "w") as f:
        f.write(
            'for (v in c("CML_MASTER_IP", "CDSW_MASTER_IP", "CDSW_ENGINE_ID", "CDSW_MASTER_ID",\n'
            '            "CDSW_APP_PORT", "CDSW_IP_ADDRESS", "CUDA_VISIBLE_DEVICES",\n'
            '            "OMP_NUM_THREADS", "GREETING"))\n'
            '  cat(v, "=", Sys.getenv(v, "<unset>"), "\\n", sep = "")\n'
            'cat("cwd=", getwd(), "\\n", sep = "")\n'
        )
    worker = _run(script="whoami.R", env={"GREETING": "hej"})
    assert worker["status"] == "succeeded" and worker["exit_code"] == 0, worker
    seen = dict(line.split("=", 1) for line in worker["tail"])  # type: ignore[attr-defined]
    session_id = _lifecycle.require().id
    assert seen["CML_MASTER_IP"] == seen["CDSW_MASTER_IP"] == "127.0.0.1"
    assert seen["CDSW_ENGINE_ID"] == worker["id"] and seen["CDSW_MASTER_ID"] == session_id
    assert seen["CDSW_APP_PORT"].isdigit() and seen["CDSW_IP_ADDRESS"] == worker["ip_address"]
    assert (seen["CUDA_VISIBLE_DEVICES"], seen["OMP_NUM_THREADS"]) == ("", "1")
    assert seen["GREETING"] == "hej" and seen["cwd"] == os.path.realpath(session)
    assert f"[{worker['name']}] CDSW_ENGINE_ID={worker['id']}" in captured.text()


def test_r_code_runs_as_a_file_would(session: str) -> None:
    # "~+~" and code past 10 kB are what `Rscript -e` gets wrong.
    code = "x <- 0\n" + "x <- x + 1\n" * 2000 + 'cat("sum", x, "\\n")\ncat("a~+~b\\n")\nx * 2'
    worker = _run(code=code)
    assert worker["status"] == "succeeded", worker
    assert worker["tail"] == ["sum 2000 ", "a~+~b", "[1] 4000"]


def test_r_exit_codes_and_errors(session: str) -> None:
    quitted = _run(code='cat("bye\\n")\nquit(status = 3)')
    assert (quitted["status"], quitted["exit_code"], quitted["reason"]) == (
        "failed",
        3,
        "exit code 3",
    )
    crashed = _run(code='print(1)\nstop("the R code failed")\nprint(2)')
    assert (crashed["status"], crashed["exit_code"]) == ("failed", 1)
    assert crashed["tail"] == ["[1] 1", "Error: the R code failed", "Execution halted"]


def test_r_output_arrives_line_by_line(session: str, tmp_path: os.PathLike[str]) -> None:
    go = os.path.join(tmp_path, "go")
    code = f'cat("first\\n")\nwhile (!file.exists("{go}")) Sys.sleep(0.05)\ncat("second\\n")'
    (worker,) = cdsw.launch_workers(1, cpu=0.25, memory=0.5, kernel="r", code=code)
    # The program is still waiting for the file: the line came out unbuffered.
    _wait(lambda: _tail(worker) == ["first"], "R's first line")
    open(go, "w").close()
    (done,) = cdsw.await_workers(worker, timeout_seconds=DEADLINE_S)["workers"]
    assert done["tail"] == ["first", "second"]


def test_stopping_an_r_worker_ends_its_whole_tree(session: str) -> None:
    code = (
        'child <- system("sleep 307 >/dev/null 2>&1 & echo $!", intern = TRUE)\n'
        'cat("child", child, tempdir(), "\\n")\n'
        "repeat Sys.sleep(1)"
    )
    (worker,) = cdsw.launch_workers(1, cpu=0.25, memory=0.5, kernel="r", code=code)
    _wait(lambda: any(line.startswith("child") for line in _tail(worker)), "the R tree")
    _, pid, r_tempdir = _tail(worker)[0].split()
    child = psutil.Process(int(pid))
    assert child.cmdline()[:2] == ["sleep", "307"]
    assert os.path.isdir(r_tempdir)
    (result,) = cdsw.stop_workers(worker, grace_period_s=2)
    assert (result.status_code, result.status) == (200, "stopped")
    assert result.worker is not None and result.worker["reason"] == "stopped by user"
    _wait(lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, "the child")
    # R, stopped, removes nothing: its session dir went with the worker's own TMPDIR
    _wait(lambda: not os.path.exists(r_tempdir), "R's temp dir removed")


def test_an_r_worker_over_its_memory_fails(session: str) -> None:
    # About 240 MB of doubles against a 0.1 GiB limit (R itself holds about 50 MB).
    (worker,) = cdsw.launch_workers(
        1, cpu=0.25, memory=0.1, kernel="r", code="x <- rep(1, 3e7)\nrepeat Sys.sleep(1)"
    )
    (failed,) = cdsw.await_workers(worker, timeout_seconds=DEADLINE_S)["failures"]
    assert failed["status"] == "failed"
    assert str(failed["reason"]).startswith("exceeded memory"), failed


def test_kernel_r_without_rscript_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]
) -> None:
    monkeypatch.setenv("PATH", os.fspath(tmp_path))
    with pytest.raises(ValueError, match=r"kernel='r' needs Rscript on PATH"):
        cdsw.launch_workers(1, cpu=0.25, memory=0.1, kernel="r", code="1")
